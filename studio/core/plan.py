"""What fits on this GPU: the catalog's models against one device and one recipe.

`plan_table(target, recipe)` estimates the recipe on every catalog model
(`studio.core.catalog`, configs only: nothing needs to be downloaded) and says, per model,
whether the recipe fits as it is, the longest ``max_length`` that fits at the recipe's batch
size, the largest batch that fits at its ``max_length``, and the estimator's advice. "Fits"
means the estimate's verdict ``fits``: at most 90 % of the device's capacity (free GPU memory,
or available RAM on the CPU), the headroom the estimate keeps for fragmentation.

Qt-free; `qlora-studio plan` prints it and the window can show it (``studio.ui.plan_view``).
Pure arithmetic once the shapes are read (cached on disk after the first time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from studio.core.recipe import Recipe

SEQ_STEP = 64  # max_length is searched in multiples of this
MAX_BATCH = 4096


# The plan as a table, the same in `qlora-studio plan` and the window's What fits… view.
PLAN_COLUMNS = ("Model", "Params", "4-bit weights", "Estimate", "Fits", "Longest seq", "Max batch")
VERDICT_WORDS = {"fits": "fits", "tight": "tight", "does_not_fit": "no"}


@dataclass(frozen=True)
class PlanRow:
    """One catalog model against the device: what the recipe needs and what would fit."""

    source: str  # "catalog:<name>", a model source the estimate and the window accept
    name: str
    display_name: str
    hub_id: str
    params: int  # computed from the config
    weights_bytes: int  # what the loaded, quantized model holds
    total_bytes: int  # the recipe's whole estimate
    capacity_bytes: int | None
    verdict: str  # "fits" | "tight" | "does_not_fit"
    max_length: int | None  # longest max_length that fits at the recipe's batch size
    max_batch: int | None  # largest batch size that fits at the recipe's max_length
    advice: str | None
    advice_changes: dict | None

    @property
    def fits(self) -> bool:
        return self.verdict == "fits"

    def cells(self) -> tuple[str, ...]:
        """The row's text under `PLAN_COLUMNS`."""
        from studio.core.units import format_bytes

        return (
            self.display_name,
            f"{self.params / 1e9:.2f} B",
            format_bytes(self.weights_bytes),
            format_bytes(self.total_bytes),
            VERDICT_WORDS.get(self.verdict, self.verdict),
            str(self.max_length) if self.max_length else "-",
            str(self.max_batch) if self.max_batch else "-",
        )

    def to_json_dict(self) -> dict:
        return {
            "source": self.source,
            "name": self.name,
            "display_name": self.display_name,
            "hub_id": self.hub_id,
            "params": self.params,
            "weights_bytes": self.weights_bytes,
            "total_bytes": self.total_bytes,
            "capacity_bytes": self.capacity_bytes,
            "verdict": self.verdict,
            "fits": self.fits,
            "max_length": self.max_length,
            "max_batch": self.max_batch,
            "advice": self.advice,
            "advice_changes": self.advice_changes,
        }


def plan_device(target, requested: str = "auto", gpu_index: int | None = None):
    """The `DeviceTarget` for ``target``: a DeviceTarget as it is; a `GpuDiscovery` (the GPU
    ``gpu_index``, else ``requested`` resolved as a recipe's training.device); a `GpuInfo`."""
    from studio.core.gpu import GpuDiscovery, GpuInfo
    from studio.core.quant import DeviceTarget, resolve_device

    if isinstance(target, DeviceTarget):
        return target
    if isinstance(target, GpuInfo):
        return DeviceTarget("cuda", target)
    if isinstance(target, GpuDiscovery):
        if gpu_index is not None:
            return resolve_device(f"cuda:{gpu_index}", target)
        return resolve_device(requested, target)
    raise TypeError(f"plan_table needs a DeviceTarget, GpuDiscovery or GpuInfo, not {target!r}")


def _fits(shape, recipe: Recipe, device) -> bool:
    from studio.core.memory import estimate

    return estimate(shape, recipe, device, _advise=False).verdict == "fits"


def _with(recipe: Recipe, section: str, **values) -> Recipe:
    return replace(recipe, **{section: replace(getattr(recipe, section), **values)})


def longest_max_length(shape, recipe: Recipe, device) -> int | None:
    """The longest ``max_length`` (a multiple of 64, up to the model's context) that fits."""
    limit = min(shape.max_position_embeddings or 131072, 131072)
    low, high = 0, limit // SEQ_STEP  # in steps of SEQ_STEP; low fits (0 = nothing yet)
    if not _fits(shape, _with(recipe, "dataset", max_length=SEQ_STEP), device):
        return None
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        if _fits(shape, _with(recipe, "dataset", max_length=mid * SEQ_STEP), device):
            low = mid
        else:
            high = mid - 1
    return low * SEQ_STEP


def largest_batch(shape, recipe: Recipe, device) -> int | None:
    """The largest batch size that fits at the recipe's ``max_length``."""
    if not _fits(shape, _with(recipe, "training", batch_size=1), device):
        return None
    low, high = 1, 2
    while high <= MAX_BATCH and _fits(shape, _with(recipe, "training", batch_size=high), device):
        low, high = high, high * 2
    high = min(high, MAX_BATCH + 1)
    while high - low > 1:  # low fits, high does not
        mid = (low + high) // 2
        if _fits(shape, _with(recipe, "training", batch_size=mid), device):
            low = mid
        else:
            high = mid
    return low


def plan_row(entry, recipe: Recipe, device) -> PlanRow:
    """One catalog entry (`studio.core.catalog.CatalogEntry`) against ``device``."""
    from studio.core.catalog import catalog_shape
    from studio.core.memory import estimate

    shape = catalog_shape(entry.name)
    recipe = _with(recipe, "model", source=entry.source)
    est = estimate(shape, recipe, device)
    return PlanRow(
        source=entry.source,
        name=entry.name,
        display_name=entry.display_name,
        hub_id=entry.hub_id,
        params=shape.total_params,
        weights_bytes=est.weights_bytes,
        total_bytes=est.total_bytes,
        capacity_bytes=est.capacity_bytes,
        verdict=est.verdict,
        max_length=longest_max_length(shape, recipe, device),
        max_batch=largest_batch(shape, recipe, device),
        advice=est.advice,
        advice_changes=est.advice_changes,
    )


def plan_table(target, recipe: Recipe | None = None, *, names=None) -> list[PlanRow]:
    """Every catalog model (or those in ``names``), smallest first, against ``target``: a
    `DeviceTarget`, a `GpuDiscovery` (its first GPU, or the CPU without one) or a `GpuInfo`.
    ``recipe`` defaults to the default recipe. Raises `QuantError` when the device refuses
    the recipe's compute dtype."""
    from studio.core.catalog import catalog_entries

    recipe = recipe or Recipe()
    device = plan_device(target, recipe.training.device)
    entries = [e for e in catalog_entries() if names is None or e.name in names]
    return [plan_row(entry, recipe, device) for entry in entries]
