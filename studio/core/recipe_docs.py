"""The per-key reference of docs/recipes.md, generated from the recipe's field metadata.

`render_reference` writes one Markdown table per section from `field_specs`; `update_markdown`
puts it between the marker comments of a document. ``scripts/gen_recipe_docs.py`` rewrites
docs/recipes.md with it, and a test fails when the file is out of step with the metadata.
"""

from __future__ import annotations

from itertools import groupby

from studio.core.recipe import field_specs

BEGIN = "<!-- BEGIN GENERATED: recipe keys -->"
END = "<!-- END GENERATED: recipe keys -->"
REGENERATE = ".venv/bin/python scripts/gen_recipe_docs.py"


def _toml_value(value) -> str:
    """A default as it is written in a recipe file: ``"nf4"``, ``true``, ``0.001``."""
    import tomli_w

    return tomli_w.dumps({"v": value}).strip()[len("v = ") :]


def _bound(value: float) -> str:
    """A bound as TOML takes it: ``10_000_000``, ``0.9``, ``1e-06``."""
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    return f"{value:g}"


def _allowed(spec) -> str:
    if spec.choices is not None:
        return ", ".join(f"`{_toml_value(c)}`" for c in spec.choices)
    if spec.type is bool:
        return "`true`, `false`"
    if spec.minimum is not None or spec.maximum is not None:
        kind = "whole number" if spec.type is int else "number"
        if spec.minimum is not None and spec.maximum is not None:
            return f"{kind}, {_bound(spec.minimum)} to {_bound(spec.maximum)}"
        if spec.minimum is not None:
            return f"{kind}, {_bound(spec.minimum)} or more"
        return f"{kind}, up to {_bound(spec.maximum)}"
    if spec.type is str:
        return "text"
    return "text or list of texts"


def _cell(text: str) -> str:
    """Plain text made safe for a Markdown table cell (no pipes, no HTML, one line)."""
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|")):
        text = text.replace(raw, escaped)
    return text.replace("\n", " ")


def _description(spec) -> str:
    text = _cell(spec.help)
    if spec.choice_help:
        for choice in spec.choices or ():
            label = (spec.choice_labels or {}).get(choice)
            shown = f"`{_toml_value(choice)}`" + (f" ({_cell(label)})" if label else "")
            text += f"<br>{shown}: {_cell(spec.choice_help[choice])}"
    return text


def render_reference() -> str:
    """The reference: per section a heading, its purpose, and a table of its keys with the
    default, what is allowed and what the key does (choices explained one by one)."""
    out: list[str] = []
    for section, specs in groupby(field_specs(), key=lambda s: s.section):
        out += [
            f"### [{section}]",
            "",
            "| Key | Default | Allowed | What it does |",
            "| --- | --- | --- | --- |",
        ]
        for spec in specs:
            out.append(
                f"| `{spec.key}` ({_cell(spec.label)}) | `{_toml_value(spec.default)}` "
                f"| {_allowed(spec)} | {_description(spec)} |"
            )
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def update_markdown(text: str) -> str:
    """``text`` with the part between `BEGIN` and `END` replaced by `render_reference`.

    Raises ValueError when the markers are missing or out of order.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN!r} and {END!r} are missing or out of order")
    head = text[: start + len(BEGIN)]
    note = f"<!-- Generated from the field metadata in studio/core/recipe.py by {REGENERATE}; "
    note += "do not edit by hand. -->"
    return f"{head}\n{note}\n\n{render_reference()}\n{text[end:]}"
