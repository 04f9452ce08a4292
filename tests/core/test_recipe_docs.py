"""docs/recipes.md: its key reference is generated from the recipe's field metadata and must
stay in step with it; its hand-written example shows the real defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from studio.core.recipe import Recipe, field_specs
from studio.core.recipe_docs import BEGIN, END, REGENERATE, render_reference, update_markdown

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "recipes.md"


def test_docs_reference_is_in_step_with_the_metadata():
    text = DOC.read_text(encoding="utf-8")
    assert update_markdown(text) == text, (
        "docs/recipes.md is out of step with the field metadata in studio/core/recipe.py; "
        f"regenerate it with: {REGENERATE}"
    )


def test_reference_has_a_row_per_key_with_default_and_help():
    reference = render_reference()
    for spec in field_specs():
        rows = [line for line in reference.splitlines() if line.startswith(f"| `{spec.key}` ")]
        assert rows, spec.dotted
        assert any(spec.help[:40].replace("<", "&lt;") in row for row in rows), spec.dotted
    for section in ("model", "quantization", "lora", "dataset", "training", "output"):
        assert f"### [{section}]" in reference
    assert '`"paged_adamw_8bit"`: 8-bit AdamW with states in paged' in reference
    assert "whole number, 0 to 4_294_967_295" in reference  # the seed's bound


def test_update_keeps_the_prose_and_replaces_only_the_marked_part():
    text = f"# Title\n\nprose before\n\n{BEGIN}\nstale table\n{END}\n\nprose after\n"
    updated = update_markdown(text)
    assert updated.startswith("# Title\n\nprose before\n\n" + BEGIN)
    assert updated.endswith(END + "\n\nprose after\n")
    assert "stale table" not in updated and render_reference() in updated
    assert update_markdown(updated) == updated
    with pytest.raises(ValueError, match="markers"):
        update_markdown("no markers here")


def test_the_script_checks_and_rewrites(tmp_path):
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_recipe_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "up to date" in check.stdout


def test_the_docs_example_shows_the_defaults():
    """The hand-written TOML example in docs/recipes.md holds every key at its default."""
    text = DOC.read_text(encoding="utf-8")
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    assert tomllib.loads(example) == Recipe().to_dict()
