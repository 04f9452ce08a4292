"""Rewrite the generated key reference in docs/recipes.md from the recipe's field metadata.

    .venv/bin/python scripts/gen_recipe_docs.py          # rewrite docs/recipes.md
    .venv/bin/python scripts/gen_recipe_docs.py --check  # exit 1 when it is out of date

Only the part between ``<!-- BEGIN GENERATED: recipe keys -->`` and ``<!-- END GENERATED:
recipe keys -->`` changes; the prose around it is kept as written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "recipes.md"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from studio.core.atomic import atomic_write_text
    from studio.core.recipe_docs import update_markdown

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is current")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    updated = update_markdown(text)
    if updated == text:
        print(f"{DOC.relative_to(REPO)} is up to date")
        return 0
    if args.check:
        print(f"{DOC.relative_to(REPO)} is out of date; run: python scripts/gen_recipe_docs.py")
        return 1
    atomic_write_text(DOC, updated)
    print(f"rewrote the key reference in {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
