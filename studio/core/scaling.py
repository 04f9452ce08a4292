"""The memory of one GPU when a run is spread over several (DDP or FSDP).

`memory.estimate` calls `per_process_terms` when ``recipe.distributed.num_processes`` > 1, so
every estimate a front end shows is per GPU; `estimate_for`, `smallest_fitting_processes`
and `scaling_table` are what a front end calls to compare process counts.

DDP replicates: every GPU holds what one GPU holds alone, plus DDP's gradient buckets (a
second copy of the trainable gradients, ``gradient_as_bucket_view`` being off by default).

FSDP (FULL_SHARD, flat parameters, as `launch.accelerate_arguments` sets it up) follows the
wrap units: each decoder layer is one unit, each trainable LoRA matrix its own unit (PEFT's
``fsdp_auto_wrap_policy``), and the root unit holds the rest (embeddings, lm_head, final
norm). A unit's flat parameter is padded to a multiple of N elements and split evenly, so a
GPU keeps ``ceil(numel / N)`` elements of each. The 4-bit weights are stored in the compute
dtype (``bnb_4bit_quant_storage``, two 4-bit values per byte as before), so they shard with
their layer; their absmax and code tables are not parameters and stay whole on every GPU. In
a step one layer is gathered whole while the next is prefetched (BACKWARD_PRE: two layers),
and the root unit stays gathered from forward to backward. Gradients and optimizer state
follow the LoRA shards. With ``cpu_offload`` the shards (weights, gradients, optimizer state)
live in CPU memory; the GPU holds only what is gathered. Activations and logits depend on the
per-GPU batch and are unchanged. On the CPU every process of a machine shares its RAM, so the
capacity one process may count on is the available RAM divided by the processes per machine.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from studio.core.models import ModelShape
from studio.core.recipe import Recipe

_LAYER_RE = re.compile(r"^(.*?\.\d+)\.")  # "model.layers.3.self_attn.q_proj.weight"
PREFETCHED_LAYERS = 2  # the layer being computed and the one prefetched (BACKWARD_PRE)


def _unit_of(name: str) -> str:
    """The FSDP unit a parameter belongs to: its decoder layer, or "" for the root."""
    match = _LAYER_RE.match(name)
    return match.group(1) if match else ""


def unit_bytes(shape: ModelShape, recipe: Recipe, dtype: str, processes: int) -> dict:
    """Per FSDP unit of the base model: (full bytes, one GPU's shard bytes) of its flat
    parameter, for the quantized and the other parameters; keyed by unit ("" = root)."""
    from studio.core.memory import DTYPE_BYTES

    q = recipe.quantization
    elem = DTYPE_BYTES[dtype]
    quantized = {lin.name + ".weight" for lin in shape.linears if lin.quantizable}
    units: dict[str, dict[str, int]] = {}
    for p in shape.params:
        unit = units.setdefault(_unit_of(p.name), {"quantized": 0, "other": 0})
        if q.mode == "4bit" and p.name in quantized:
            unit["quantized"] += (p.numel + 1) // 2  # packed, in quant_storage elements' bytes
        elif q.mode == "8bit" and p.name in quantized:
            unit["quantized"] += p.numel
        else:
            unit["other"] += p.numel * DTYPE_BYTES[p.fixed_dtype or dtype]
    for unit in units.values():
        full = unit["quantized"] + unit["other"]
        elems = math.ceil(full / elem)
        shard = math.ceil(elems / processes) * elem  # padded to a multiple of N, split evenly
        unit["full"] = full
        unit["shard"] = shard
    return units


def _lora_sizes(shape: ModelShape, recipe: Recipe) -> list[int]:
    from studio.core.memory import lora_targets

    lora = recipe.lora
    sizes: list[int] = []
    for lin in lora_targets(shape, lora.target_modules):
        sizes += [lora.r * lin.in_features, lin.out_features * lora.r]
        if lora.use_dora:
            sizes.append(lin.out_features)
    return sizes


def per_process_terms(terms: list, shape: ModelShape, recipe: Recipe, dtype: str) -> list:
    """One GPU's terms (see the module docstring) from the one-GPU terms of ``memory.estimate``
    (before its fixed CUDA terms); unchanged for one process."""
    from studio.core.memory import Term, _at_the_peak, _optimizer_bytes

    d = recipe.distributed
    n = d.num_processes
    if n <= 1:
        return list(terms)
    by_key = {t.key: t for t in terms}
    # The terms that compete for the step's peak, at their own size (re-split below).
    peak_keys = ("logits", "lora_grads", "recompute", "dequant")
    rest = [t for t in terms if t.key not in peak_keys]
    sized = {k: replace(by_key[k], bytes=by_key[k].size_bytes, off_peak_bytes=0) for k in peak_keys}
    sized = {k: replace(t, note=t.note.split("; not at the peak")[0]) for k, t in sized.items()}

    if d.strategy == "ddp":
        grads = sized["lora_grads"].bytes
        rest.append(
            Term(
                "ddp_buckets",
                "DDP gradient buckets",
                grads,
                "training",
                f"DDP's copy of the trainable gradients for the all-reduce; each of the {n} "
                "GPUs holds the whole model (DDP replicates)",
            )
        )
        return rest + _at_the_peak(sized["logits"], [sized[k] for k in peak_keys[1:]])

    offload = d.cpu_offload
    where = "in CPU memory (offloaded)" if offload else f"1/{n} per GPU"
    units = unit_bytes(shape, recipe, dtype, n)
    shard_total = sum(u["shard"] for u in units.values())
    full_total = sum(u["full"] for u in units.values())
    sizes = _lora_sizes(shape, recipe)
    lora_shard = sum(4 * math.ceil(s / n) for s in sizes)  # each LoRA matrix its own unit
    optimizer_shard = _optimizer_bytes([math.ceil(s / n) for s in sizes], recipe.training.optimizer)
    out = []
    for t in rest:
        if t.key == "quantized_linears":
            continue  # counted with its layer's flat parameter below
        if t.key == "non_quantized":
            out.append(
                Term(
                    "fsdp_shards",
                    f"Weight shards (FSDP, {n} GPUs)",
                    0 if offload else shard_total,
                    "weights",
                    f"each unit's flat parameter ({_fmt(full_total)} in all, quantized linears "
                    f"stored in {dtype}) padded to a multiple of {n} and split: {where}",
                )
            )
            continue
        if t.key == "lora_weights":
            t = replace(t, bytes=0 if offload else lora_shard, note=f"{t.note}; {where}")
        elif t.key == "optimizer":
            t = replace(t, bytes=0 if offload else optimizer_shard, note=f"{t.note}; {where}")
        out.append(t)
    layers = [u["full"] for name, u in units.items() if name]
    root = units.get("", {"full": 0})["full"]
    gathered = PREFETCHED_LAYERS * max(layers, default=0)
    out.append(
        Term(
            "fsdp_gathered",
            "Gathered layers (FSDP)",
            gathered + root,
            "weights",
            f"the decoder layer being computed and the next one, gathered whole "
            f"({_fmt(gathered)}), and the root unit (embeddings, lm_head, norm: {_fmt(root)}) "
            "kept gathered from forward to backward",
        )
    )
    grads = sized["lora_grads"]
    grads = replace(grads, bytes=0 if offload else lora_shard, note=f"{grads.note}; {where}")
    sized["lora_grads"] = grads
    return out + _at_the_peak(sized["logits"], [sized[k] for k in peak_keys[1:]])


def _fmt(value: int) -> str:
    from studio.core.units import format_bytes

    return format_bytes(value)


def per_process_capacity(capacity: int | None, device, recipe: Recipe) -> int | None:
    """On the CPU the processes of a machine share its RAM; a GPU is one process's own."""
    if capacity is None or device.kind == "cuda":
        return capacity
    return capacity // recipe.distributed.processes_per_machine


# --------------------------------------------------------------------------- comparisons


def estimate_for(
    shape: ModelShape, recipe: Recipe, device, processes: int, strategy=None, *, advise=True
):
    """`memory.estimate` of ``recipe`` with ``processes`` processes (and ``strategy``);
    ``advise=False`` skips the advice (its search re-estimates), for quick comparisons."""
    from studio.core.memory import estimate

    changes = {"num_processes": processes}
    if strategy is not None:
        changes["strategy"] = strategy
    # Not re-validated: a gpus list sized for another count must not refuse the comparison.
    changed = replace(recipe, distributed=replace(recipe.distributed, **changes))
    return estimate(shape, changed, device, _advise=advise)


def smallest_fitting_processes(
    shape: ModelShape, recipe: Recipe, device, strategy: str | None = None, limit: int = 64
) -> int | None:
    """The fewest processes (GPUs) with which the per-GPU estimate fits the device, or None
    when even ``limit`` do not (DDP never lowers the per-GPU figure: 1 or None)."""
    strategy = strategy or recipe.distributed.strategy
    for n in range(1, limit + 1):
        est = estimate_for(shape, recipe, device, n, strategy, advise=False)
        if est.verdict != "does_not_fit":
            return n
        if strategy == "ddp" and n >= 2:
            return None
    return None


def scaling_table(
    shape: ModelShape, recipe: Recipe, device, counts=(1, 2, 4, 8), strategy: str | None = None
) -> list[tuple[int, object]]:
    """(processes, per-GPU `MemoryEstimate`) for each count: what a process-count picker shows."""
    return [(n, estimate_for(shape, recipe, device, n, strategy)) for n in counts]


# --------------------------------------------------------------------------- for a front end


def inactive_distributed_fields(recipe: Recipe) -> dict[str, str]:
    """``[distributed]`` keys with no effect given the others (dotted key -> why), for a
    window to disable with the reason, like `session.inactive_fields` does for the rest."""
    d = recipe.distributed
    found: dict[str, str] = {}
    if not d.launched:
        why = "only used with more than one process"
        found["distributed.strategy"] = why
        found["distributed.gpus"] = why
    if d.strategy != "fsdp" or not d.launched:
        found["distributed.cpu_offload"] = "only used with the fsdp strategy"
    if d.num_machines == 1:
        why = "only used with several machines"
        for key in ("machine_rank", "main_process_ip", "main_process_port"):
            found[f"distributed.{key}"] = why
    return found


def run_gpu_indices(recipe: Recipe, device) -> tuple[int, ...]:
    """The GPUs a run of ``recipe`` on ``device`` (a `quant.DeviceTarget`) uses: the
    ``distributed.gpus`` named, else the first one per process on this machine (as accelerate
    takes them); the device's own GPU for one process; () on the CPU."""
    gpu = getattr(device, "gpu", None)
    if gpu is None:
        return ()
    d = recipe.distributed
    if not d.launched:
        return (gpu.index,)
    return d.gpu_indices() or tuple(range(d.processes_per_machine))


def distributed_start_problem(recipe: Recipe, device, gpu_count: int | None = None) -> str:
    """Why ``recipe``'s ``[distributed]`` section cannot start on ``device`` (a
    `quant.DeviceTarget`) with ``gpu_count`` GPUs found on this machine; "" when it can.
    (The CPU and simulated GPUs run any number of processes, DDP or FSDP.)"""
    d = recipe.distributed
    if not d.launched:
        return ""
    for key, message in d.topology_problems().items():
        return f"distributed.{key}: {message}"
    on_gpu = device is not None and device.torch_device.startswith("cuda")
    if on_gpu and gpu_count is not None and d.processes_per_machine > gpu_count:
        return (
            f"distributed.num_processes: {d.processes_per_machine} processes on this machine "
            f"need as many GPUs; {gpu_count} found"
        )
    indices = d.gpu_indices()
    if on_gpu and gpu_count is not None and indices and max(indices) >= gpu_count:
        return f"distributed.gpus: there is no GPU {max(indices)}; {gpu_count} found"
    return ""
