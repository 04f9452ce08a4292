"""Recipe values that only make sense against a model's shape, checked before any work.

The recipe module checks each value on its own; these depend on the model: LoRA
``target_modules`` must name modules the model has (PEFT would fail deep inside with a
traceback). The estimate command and the engine call `check_recipe_against_shape` once they
have the `studio.core.models.ModelShape`; a front end with a shape (the window) can too.
"""

from __future__ import annotations

import re

from studio.core.recipe import RecipeError


def _leaf_names(names) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name.rpartition(".")[2], None)
    return list(seen)


def lora_candidates(shape) -> list[str]:
    """Full names of the modules LoRA can wrap in this model: its linears and embeddings."""
    names = [lin.name for lin in shape.linears]
    names += sorted({p.module for p in shape.params if p.kind == "embedding" and p.module})
    return names


def _matches(target: str, name: str) -> bool:
    # PEFT's rule for a list entry: the whole name, or its dotted suffix.
    return name == target or name.endswith("." + target)


def check_target_modules(target_modules, shape) -> None:
    """Raise `RecipeError` (``lora.target_modules``) when a target is not in the model."""
    if target_modules == "all-linear":
        return
    candidates = lora_candidates(shape)
    linear_leaves = _leaf_names(
        lin.name for lin in shape.linears if not lin.is_output
    ) or _leaf_names(candidates)
    have = ", ".join(linear_leaves)
    model = shape.architecture or "this model"
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise RecipeError(
                "lora.target_modules", f"{target_modules!r} is not a valid pattern ({exc})"
            ) from None
        if not any(pattern.fullmatch(name) for name in candidates):
            raise RecipeError(
                "lora.target_modules",
                f"the pattern {target_modules!r} matches no module of {model}; its linear "
                f"modules are {have} (or use 'all-linear')",
            )
        return
    missing = [t for t in target_modules if not any(_matches(t, n) for n in candidates)]
    if missing:
        names = ", ".join(repr(t) for t in missing)
        raise RecipeError(
            "lora.target_modules",
            f"{model} has no module named {names}; its linear modules are {have} "
            "(or use 'all-linear')",
        )


def check_recipe_against_shape(recipe, shape) -> None:
    """Every model-dependent check of ``recipe``; raises `RecipeError` for the first problem."""
    check_target_modules(recipe.lora.target_modules, shape)
