"""The memory estimator: what a QLoRA run holds, as named terms in bytes.

`estimate(shape, recipe, device)` is pure arithmetic over a `ModelShape` (no torch), cheap
enough to run on every keystroke. The weight terms are exact (they reproduce bitsandbytes'
storage layout byte for byte); the activation, logits and fixed CUDA terms are models whose
coefficients live in `COEFFICIENTS`, one place a GPU calibration can replace. Sources and
derivations: docs/memory-estimator.md and MEMORY_MODEL.md.

`measure_model_bytes(model)` is the truth the weight terms are tested against: every byte a
loaded model's tensors hold, quantization state included, shared storage counted once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

from studio.core import units
from studio.core.models import LinearShape, ModelShape
from studio.core.recipe import Recipe

MIB = 1024**2
GIB = 1024**3
DTYPE_BYTES = {
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "int8": 1,
    "uint8": 1,
    "int64": 8,
    "int32": 4,
    "bool": 1,
    "float64": 8,
}
GROUPS = ("weights", "training", "activations", "fixed")

# bitsandbytes 4-bit storage (Params4bit / QuantState, bitsandbytes 0.50)
BNB_BLOCKSIZE = 64  # elements per absmax
BNB_NESTED_BLOCKSIZE = 256  # absmax values per nested (double-quant) scale
BNB_CODE_4BIT = 16 * 4  # the NF4/FP4 code table: 16 fp32 values, one tensor per weight
BNB_CODE_NESTED = 256 * 4  # the dynamic 8-bit table of the nested quantization
BNB_OFFSET = 4  # the fp32 mean subtracted from absmax before nested quantization
# bitsandbytes 8-bit optimizers keep 32-bit state for tensors smaller than this
OPTIM_8BIT_MIN_SIZE = 4096
OPTIM_8BIT_BLOCK = 256  # elements per blockwise-quantized optimizer state scale
OPTIM_8BIT_QMAP = 256 * 4  # each 8-bit state's fp32 quantization map, shared by all tensors


@dataclass(frozen=True)
class Coefficients:
    """Every modelled (not exact) coefficient, in one place for GPU calibration.

    Activations are counted per token and per layer in *elements*, multiplied by the byte
    size of the tensor they live in (residual stream: fp32 with the k-bit upcast, else the
    compute dtype; MLP intermediates: compute dtype). Fitted to MEMORY_MODEL.md's measured
    Llama-2-7B layer (171.6 KB/token without upcast, 262.2 KB with, bf16, SDPA, LoRA on all
    seven linears, no dropout): 8.7*h + 2*kv elements in the residual dtype plus 2 per
    MLP-intermediate output (gate, up -> act(gate), act*up) in the compute dtype.
    """

    act_residual_per_h: float = 8.7  # per layer, per token, times hidden size
    act_residual_per_kv: float = 2.0  # K and V outputs (GQA width)
    act_per_intermediate_output: float = 2.0  # each intermediate-sized linear output, x2
    checkpoint_per_h: float = 1.0  # saved per layer with gradient checkpointing
    checkpoint_extra_layers: float = 1.0  # the final norm's input
    logits_bytes_16bit: float = 12.0  # per token per vocab entry: logits, fp32 upcast, grad
    logits_bytes_32bit: float = 20.0  # float32 compute (MEMORY_MODEL.md; not measured yet)
    dequant_copies: float = 1.0  # times the largest quantized weight in the compute dtype
    cuda_context_bytes: int = 500 * MIB  # CUDA context + kernels (300-600 MB measured)
    # The engine process on the CPU before it loads a model: Python, torch, transformers, peft,
    # bitsandbytes, datasets. Resident memory measured after those imports: 472 MiB (torch
    # 2.13 CPU build, Linux; benchmarks/estimator_accuracy.py measures it again).
    cpu_runtime_bytes: int = 470 * MIB
    cublas_workspace_bytes: int = 32 * MIB
    allocator_fraction: float = 0.08  # caching-allocator rounding and fragmentation
    tight_fraction: float = 0.90  # above this share of capacity: "tight"
    # --- CPU only (measured on the CPU, which trains without autocast; they do not apply to
    # CUDA, whose terms above still need a GPU calibration). Per decoder layer and token, in
    # bytes, from the tensors autograd saves (torch.autograd.graph.saved_tensors_hooks on the
    # built-in SmolLM2-135M and a Qwen2 layer, exact for both; docs/memory-estimator.md):
    cpu_lora_input_fp32: float = 4.0  # each LoRA linear's input copied to fp32 (LoRA's dtype)
    cpu_dropout_input_fp32: float = 4.0  # each LoRA linear's dropped input, fp32
    cpu_dropout_upcast_per_h: float = 16.0  # with the upcast, dropout unshares 4 fp32 h copies
    cpu_upcast_flat_copies_h: float = 2.0  # with the upcast: 2 fp32 h-wide copies (2-D inputs)
    cpu_upcast_flat_copies_i: float = 1.0  # ... and 1 fp32 MLP-wide one (down's input)
    cpu_norm_fp32_per_h: float = 8.0  # two RMSNorms, each keeps an fp32 copy (4 bytes each)
    cpu_attention_per_h: float = 2.0  # q and the attention output, residual dtype
    cpu_attention_per_kv: float = 2.0  # k and v (not repeated for GQA), residual dtype
    cpu_mlp_extra_outputs: float = 1.0  # MLP-wide tensors: each MLP-wide output + the product
    # The engine process's resident memory besides tensors once a run is under way, on top of
    # cpu_runtime_bytes: the tokenizer, the tokenized dataset, the Trainer and optimizer
    # modules, thread pools, malloc's small-object heap. The median of (exact peak - estimate)
    # over the Qwen2 runs of benchmarks/whole_run_accuracy.py (60-102 MiB), with the engine's
    # allocator settings (engine/allocator.py); the built-in model's runs check it.
    cpu_run_overhead_bytes: int = 86 * MIB


COEFFICIENTS = Coefficients()


@dataclass(frozen=True)
class Term:
    """One named share of the total. ``group``: weights | training | activations | fixed.

    ``bytes`` is what the term adds at the step's peak, so the terms sum to the total. A term
    that exists during a step but not at its peak (see `estimate`) has ``bytes`` 0 and its
    own size in ``off_peak_bytes``.
    """

    key: str
    label: str
    bytes: int
    group: str
    note: str
    off_peak_bytes: int = 0

    @property
    def size_bytes(self) -> int:
        """The term's own size, whether or not it counts at the peak."""
        return self.bytes or self.off_peak_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    """The breakdown, its total and how it compares with the device's capacity."""

    terms: tuple[Term, ...]
    total_bytes: int
    weights_bytes: int  # what the loaded, quantized model holds before training
    device: str
    capacity_bytes: int | None
    fits: bool | None
    verdict: str  # "fits" | "tight" | "does_not_fit"
    advice: str | None
    compute_dtype: str = ""
    # The recipe changes the advice names ({"training": {"batch_size": 2}}), when it names one
    # that makes the run fit (or fit tightly); None otherwise.
    advice_changes: dict | None = None
    # Processes the run is spread over; above 1 the terms and the total are one GPU's share
    # (studio.core.scaling), ``strategy`` is "ddp" or "fsdp".
    processes: int = 1
    strategy: str = ""
    # The sequence length each example is counted at: dataset.max_length, or the dataset's
    # longest example when it is shorter and known (`estimate_with_data`; then from_data).
    sequence_tokens: int = 0
    sequence_from_data: bool = False

    def largest_first(self) -> list[Term]:
        """The non-zero terms, largest first."""
        return sorted((t for t in self.terms if t.bytes), key=lambda t: -t.bytes)

    def off_peak_terms(self) -> list[Term]:
        """The terms in use during a step but not at its peak (they count 0 in the total)."""
        return [t for t in self.terms if t.off_peak_bytes]

    def term(self, key: str) -> Term:
        for t in self.terms:
            if t.key == key:
                return t
        raise KeyError(key)

    def to_json_dict(self) -> dict:
        return {
            "total_bytes": self.total_bytes,
            "weights_bytes": self.weights_bytes,
            "terms": {t.key: t.bytes for t in self.terms},
            "off_peak_terms": {t.key: t.off_peak_bytes for t in self.off_peak_terms()},
            "groups": {g: sum(t.bytes for t in self.terms if t.group == g) for g in GROUPS},
            "device": self.device,
            "capacity_bytes": self.capacity_bytes,
            "fits": self.fits,
            "verdict": self.verdict,
            "advice": self.advice,
            "advice_changes": self.advice_changes,
            "sequence_tokens": self.sequence_tokens,
            "sequence_from_data": self.sequence_from_data,
            "compute_dtype": self.compute_dtype,
            "processes": self.processes,
            "strategy": self.strategy,
        }


# --------------------------------------------------------------------------- weights


def bytes_4bit(numel: int, double_quant: bool) -> tuple[int, int, int]:
    """(packed data, absmax, constants) bytes of one bitsandbytes 4-bit weight."""
    packed = (numel + 1) // 2
    blocks = math.ceil(numel / BNB_BLOCKSIZE)
    if double_quant:
        nested = math.ceil(blocks / BNB_NESTED_BLOCKSIZE)
        return packed, blocks, BNB_CODE_4BIT + 4 * nested + BNB_CODE_NESTED + BNB_OFFSET
    return packed, 4 * blocks, BNB_CODE_4BIT


def bytes_8bit(out_features: int, in_features: int) -> tuple[int, int]:
    """(int8 data, fp32 row scales) bytes of one LLM.int8 weight."""
    return out_features * in_features, 4 * out_features


def _param_dtype(param, load_dtype: str) -> str:
    if param.fixed_dtype:
        return param.fixed_dtype
    if param.fp16_upcast and load_dtype == "float16":
        return "float32"
    return load_dtype


def _weight_terms(shape: ModelShape, recipe: Recipe, dtype: str) -> tuple[list[Term], int]:
    """The weight terms for training, and the bytes the model holds right after loading."""
    q = recipe.quantization
    mode = q.mode
    quantized = {lin.name + ".weight": lin for lin in shape.linears if lin.quantizable}
    terms: list[Term] = []
    packed = absmax = constants = 0
    count = 0
    other_loaded = other_training = 0
    upcast = q.fp32_upcast and mode != "none"
    for p in shape.params:
        if mode != "none" and p.name in quantized:
            count += 1
            if mode == "4bit":
                a, b, c = bytes_4bit(p.numel, q.double_quant)
            else:
                lin = quantized[p.name]
                a, b = bytes_8bit(lin.out_features, lin.in_features)
                c = 0
            packed += a
            absmax += b
            constants += c
            continue
        pdtype = _param_dtype(p, dtype)
        size = p.numel * DTYPE_BYTES[pdtype]
        other_loaded += size
        # prepare_model_for_kbit_training casts fp16/bf16 params (not 4/8-bit ones) to fp32
        other_training += p.numel * 4 if upcast and pdtype in ("float16", "bfloat16") else size
    buffers = sum(b.numel * DTYPE_BYTES[b.fixed_dtype or dtype] for b in shape.buffers)

    if mode == "4bit":
        qt = q.quant_type.upper()
        terms.append(
            Term(
                "quantized_linears",
                f"4-bit {qt} linears (packed)",
                packed,
                "weights",
                f"{count} linears, 2 weights per byte",
            )
        )
        if q.double_quant:
            absmax_note = "one uint8 absmax per 64 weights (double quantization)"
            const_note = (
                "per linear: 16-entry fp32 code table, fp32 nested scale per 256 "
                "absmax, 256-entry fp32 nested table, fp32 offset"
            )
        else:
            absmax_note = "one fp32 absmax per 64 weights"
            const_note = "per linear: 16-entry fp32 code table"
        terms.append(Term("quant_absmax", "4-bit absmax scales", absmax, "weights", absmax_note))
        terms.append(
            Term(
                "quant_constants",
                "4-bit code tables and constants",
                constants,
                "weights",
                const_note,
            )
        )
    elif mode == "8bit":
        terms.append(
            Term(
                "quantized_linears",
                "8-bit linears (int8)",
                packed,
                "weights",
                f"{count} linears, 1 byte per weight",
            )
        )
        terms.append(
            Term(
                "quant_absmax",
                "8-bit row scales",
                absmax,
                "weights",
                "one fp32 scale per output row (SCB)",
            )
        )
    what = "all parameters" if mode == "none" else "embeddings, lm_head, norms, biases"
    if upcast and other_training != other_loaded:
        note = f"{what}; fp32 after PEFT's k-bit preparation (loaded in {dtype})"
    else:
        note = f"{what}, in {dtype}"
    terms.append(Term("non_quantized", "Non-quantized parameters", other_training, "weights", note))
    terms.append(
        Term(
            "buffers",
            "Buffers",
            buffers,
            "weights",
            "what the loaded model holds besides parameters (e.g. rotary inv_freq)",
        )
    )
    loaded = packed + absmax + constants + other_loaded + buffers
    return terms, loaded


# --------------------------------------------------------------------------- LoRA & optimizer


def lora_targets(shape: ModelShape, target_modules) -> list[LinearShape]:
    """The linears PEFT wraps: "all-linear" = every linear but the output embedding;
    a list = linears whose name is, or ends with ``.<name>``."""
    if isinstance(target_modules, str):
        return [lin for lin in shape.linears if not lin.is_output]
    names = tuple(target_modules)
    return [
        lin
        for lin in shape.linears
        if any(lin.name == n or lin.name.endswith("." + n) for n in names)
    ]


def _optimizer_bytes(tensor_sizes: list[int], optimizer: str) -> int:
    """Optimizer state for trainable tensors of these sizes (bitsandbytes 0.50 / torch layout).

    32-bit AdamW: two fp32 moments per element (torch's per-tensor ``step`` scalars live on
    the CPU and are left out). 8-bit AdamW: tensors of 4096+ elements keep two uint8 moments
    plus one fp32 absmax per 256 elements each, and the optimizer shares two 256-entry fp32
    quantization maps; smaller tensors keep two fp32 moments.
    """
    if optimizer in ("adamw_torch", "paged_adamw_32bit"):
        return 8 * sum(tensor_sizes)
    total = 0
    any_8bit = False
    for n in tensor_sizes:
        if n >= OPTIM_8BIT_MIN_SIZE:
            any_8bit = True
            total += 2 * n + 2 * 4 * math.ceil(n / OPTIM_8BIT_BLOCK)
        else:
            total += 8 * n
    return total + (2 * OPTIM_8BIT_QMAP if any_8bit else 0)


# --------------------------------------------------------------------------- the estimate


def _residual_bytes(recipe: Recipe, dtype: str) -> int:
    q = recipe.quantization
    if dtype == "float32" or (q.fp32_upcast and q.mode != "none"):
        return 4
    return DTYPE_BYTES[dtype]


def _layer_linears(shape: ModelShape) -> list[LinearShape]:
    """The linears of one (the first) decoder layer."""
    for lin in shape.linears:
        if lin.is_output:
            continue
        parts = lin.name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                prefix = ".".join(parts[: i + 1]) + "."
                return [x for x in shape.linears if x.name.startswith(prefix)]
    return []


def _cpu_layer_bytes(
    shape: ModelShape, recipe: Recipe, resid: int, targets, inter_outputs
) -> float:
    """Bytes one decoder layer saves for backward per token on the CPU (no autocast).

    Measured with ``saved_tensors_hooks`` (docs/memory-estimator.md has the tensor list):
    - LoRA inputs: without the upcast every wrapped linear keeps its own fp32 copy of its
      input (LoRA weights are fp32); with it the inputs are fp32 already, and only the 2-D
      copies of the attention and o_proj inputs (h wide) and down's input (MLP wide) remain;
    - LoRA dropout > 0: each wrapped linear's dropped input in fp32 (never the residual
      dtype), and with the upcast 4 more h-wide fp32 tensors that no longer share storage;
    - the two norms keep an fp32 copy each, upcast or not;
    - attention: q and its output h wide, k and v kv wide (GQA not repeated), residual dtype,
      plus the fp32 log-sum-exp per head;
    - the MLP-wide outputs (gate, up) plus act(gate) in the residual dtype (bitsandbytes
      returns its input's dtype); LoRA's rank-wide A outputs in fp32.
    """
    co = COEFFICIENTS
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.num_kv_heads * (shape.head_dim or (h // max(shape.num_attention_heads, 1)))
    q_width = shape.num_attention_heads * (
        shape.head_dim or (h // max(shape.num_attention_heads, 1))
    )
    wrapped_in = sum(x.in_features for x in targets)
    upcast = resid == 4
    if upcast:
        lora_in = (co.cpu_upcast_flat_copies_h * h + co.cpu_upcast_flat_copies_i * i) * 4
        lora_in = min(lora_in, co.cpu_lora_input_fp32 * wrapped_in) if targets else 0.0
    else:
        lora_in = co.cpu_lora_input_fp32 * wrapped_in
    total = lora_in + co.cpu_norm_fp32_per_h * h
    total += (co.cpu_attention_per_h * q_width + co.cpu_attention_per_kv * kv) * resid
    total += 4 * shape.num_attention_heads + 8  # log-sum-exp per head; the norms' rsqrt
    total += (len(inter_outputs) + co.cpu_mlp_extra_outputs) * i * resid if inter_outputs else 0
    total += 4 * recipe.lora.r * len(targets)
    if recipe.lora.dropout > 0 and targets:
        total += co.cpu_dropout_input_fp32 * wrapped_in
        if upcast:
            total += co.cpu_dropout_upcast_per_h * h
    return total


def estimate(shape: ModelShape, recipe: Recipe, device, *, _advise: bool = True) -> MemoryEstimate:
    """The memory breakdown of training ``recipe`` on ``shape`` on ``device`` (a DeviceTarget).

    Pure and cheap (arithmetic over the cached shape). Raises `studio.core.quant.QuantError`
    when the device refuses the recipe's compute dtype.
    """
    from studio.core.quant import resolve_compute_dtype

    dtype = resolve_compute_dtype(recipe.quantization.compute_dtype, device)
    co = COEFFICIENTS
    terms, loaded = _weight_terms(shape, recipe, dtype)

    lora = recipe.lora
    targets = lora_targets(shape, lora.target_modules)
    sizes: list[int] = []
    for lin in targets:
        sizes += [lora.r * lin.in_features, lin.out_features * lora.r]
        if lora.use_dora:
            sizes.append(lin.out_features)
    trainable = sum(sizes)
    dora = " + DoRA magnitudes" if lora.use_dora else ""
    terms.append(
        Term(
            "lora_weights",
            "LoRA weights",
            4 * trainable,
            "training",
            f"{trainable:,} fp32 params: r*(in+out) on {len(targets)} linears{dora}",
        )
    )
    lora_grads = Term(
        "lora_grads", "LoRA gradients", 4 * trainable, "training", "fp32, one per LoRA weight"
    )
    optim = recipe.training.optimizer
    optim_note = (
        "8 bytes per trainable param (two fp32 moments)"
        if optim in ("adamw_torch", "paged_adamw_32bit")
        else "~2 bytes per param for tensors of 4096+ elements, 8 below"
    )
    if optim.startswith("paged"):
        optim_note += "; paged: CUDA managed memory (NVML sees it, torch allocated does not)"
    terms.append(
        Term(
            "optimizer",
            f"Optimizer state ({optim})",
            _optimizer_bytes(sizes, optim),
            "training",
            optim_note,
        )
    )

    # activations
    t = recipe.training
    tokens = t.batch_size * recipe.dataset.max_length
    c = DTYPE_BYTES[dtype]
    resid = _residual_bytes(recipe, dtype)
    h, layers = shape.hidden_size, shape.num_layers
    kv = shape.num_kv_heads * (shape.head_dim or (h // max(shape.num_attention_heads, 1)))
    layer_lins = _layer_linears(shape)
    inter_outputs = [x for x in layer_lins if x.out_features == shape.intermediate_size]
    layer_targets = [x for x in targets if x in layer_lins] if layer_lins else []
    if device.kind == "cpu":
        per_token_layer = _cpu_layer_bytes(shape, recipe, resid, layer_targets, inter_outputs)
    else:
        per_token_layer = (
            co.act_residual_per_h * h + co.act_residual_per_kv * kv
        ) * resid + co.act_per_intermediate_output * len(
            inter_outputs
        ) * shape.intermediate_size * c
        per_token_layer += sum(lora.r for _ in layer_targets) * resid
        if lora.dropout > 0:
            # each wrapped linear keeps its own dropped input and a boolean mask
            per_token_layer += sum(x.in_features for x in layer_targets) * (resid + 1)
    if t.gradient_checkpointing:
        saved = tokens * (layers * co.checkpoint_per_h + co.checkpoint_extra_layers) * h * resid
        act_note = f"checkpoints: one {resid}-byte residual per layer per token"
        recompute = tokens * per_token_layer
    else:
        saved = tokens * layers * per_token_layer
        act_note = "every layer keeps its saved tensors (no gradient checkpointing)"
        recompute = 0
    terms.append(
        Term(
            "activations",
            "Saved activations",
            int(saved),
            "activations",
            f"{act_note}; {tokens} tokens per step",
        )
    )
    per = co.logits_bytes_32bit if dtype == "float32" else co.logits_bytes_16bit
    # The fp32 upcast makes no difference here: measured on the CPU, a step's logits peak is
    # the same ~12 bytes per entry with it as without (benchmarks/activation_accuracy.py),
    # and on a GPU autocast computes the upcast lm_head's logits in the compute dtype anyway.
    logits = Term(
        "logits",
        "Logits and loss",
        int(per * tokens * shape.vocab_size),
        "activations",
        f"~{per:g} bytes per token per vocab entry ({shape.vocab_size:,} entries)",
    )
    if recipe.quantization.mode != "none":
        largest = max(
            (lin.in_features * lin.out_features for lin in shape.linears if lin.quantizable),
            default=0,
        )
        dq = int(co.dequant_copies * largest * c)
    else:
        dq = 0
    backward = [
        lora_grads,
        Term(
            "recompute",
            "Layer recompute",
            int(recompute),
            "activations",
            "one layer's saved tensors, recomputed in backward (gradient checkpointing)",
        ),
        Term(
            "dequant",
            "Dequantization temporaries",
            dq,
            "activations",
            f"the largest quantized weight dequantized to {dtype}",
        ),
    ]
    terms += _at_the_peak(logits, backward)
    if device.kind == "cpu":
        # What the process's resident memory (the CPU's measured peak) holds besides tensors.
        terms.append(
            Term(
                "cpu_runtime",
                "Python and libraries",
                co.cpu_runtime_bytes + co.cpu_run_overhead_bytes,
                "fixed",
                "the engine process's Python, PyTorch and training libraries, tokenizer, "
                "dataset and Trainer",
            )
        )
        q = recipe.quantization
        if q.mode != "none" and not q.fp32_upcast and dtype != "float32":
            # Without the upcast the embeddings, norms and lm_head stay views of the memory-
            # mapped checkpoint (stored in the compute dtype), so the file's pages that loading
            # read, the quantized linears' 16-bit source included, stay resident.
            terms.append(
                Term(
                    "cpu_file_pages",
                    "Mapped checkpoint pages",
                    shape.quantizable_params * c,
                    "fixed",
                    "the checkpoint's 16-bit linears, read while quantizing and kept mapped "
                    "while the non-quantized weights are views of the file (no fp32 upcast)",
                )
            )
    if recipe.distributed.num_processes > 1:  # one GPU's share (studio.core.scaling)
        from studio.core.scaling import per_process_terms

        terms = per_process_terms(terms, shape, recipe, dtype)
    # fixed CUDA costs
    if device.kind == "cuda":
        subtotal = sum(x.bytes for x in terms)
        terms.append(
            Term(
                "cuda_context",
                "CUDA context",
                co.cuda_context_bytes,
                "fixed",
                "driver context and kernels (300-600 MB), cuBLAS workspace apart",
            )
        )
        terms.append(
            Term(
                "allocator",
                "Allocator overhead and workspaces",
                int(co.allocator_fraction * subtotal) + co.cublas_workspace_bytes,
                "fixed",
                f"{co.allocator_fraction:.0%} caching-allocator rounding and "
                "fragmentation + 32 MiB cuBLAS workspace",
            )
        )

    total = sum(x.bytes for x in terms)
    capacity = _capacity(device)
    if recipe.distributed.num_processes > 1:
        from studio.core.scaling import per_process_capacity

        capacity = per_process_capacity(capacity, device, recipe)
    verdict = _verdict(total, capacity)
    est = MemoryEstimate(
        terms=tuple(terms),
        total_bytes=total,
        weights_bytes=loaded,
        device=device.name,
        capacity_bytes=capacity,
        fits=None if capacity is None else total <= capacity,
        verdict=verdict,
        advice=None,
        compute_dtype=dtype,
        processes=recipe.distributed.num_processes,
        strategy=recipe.distributed.strategy if recipe.distributed.num_processes > 1 else "",
        sequence_tokens=recipe.dataset.max_length,
    )
    if _advise and verdict != "fits" and capacity is not None:
        advice, changes = _advice(shape, recipe, device, est)
        est = replace(est, advice=advice, advice_changes=changes)
    return est


def estimate_with_data(
    shape: ModelShape, recipe: Recipe, device, *, longest_tokens: int | None
) -> MemoryEstimate:
    """`estimate` for a dataset whose longest example is ``longest_tokens`` tokens (before
    truncation; None: unknown).

    The engine pads each batch only to its own longest example, so the step at the peak holds
    ``batch_size x min(max_length, longest)`` tokens: with examples shorter than
    ``dataset.max_length`` the run never needs what ``max_length`` alone would say (the
    shipped sample's longest example is 94 tokens against a max_length of 256, which counted
    2.7 times the activations the run has). The advice is then about that length too.
    """
    length = recipe.dataset.max_length
    if not longest_tokens or longest_tokens >= length:
        return estimate(shape, recipe, device)
    shorter = replace(recipe, dataset=replace(recipe.dataset, max_length=int(longest_tokens)))
    return replace(estimate(shape, shorter, device), sequence_from_data=True)


def _at_the_peak(logits: Term, backward: list[Term]) -> list[Term]:
    """The step's two peaks; only the larger one counts towards the total.

    A step's memory peaks either when the loss is computed (the saved activations plus the
    logits, their fp32 copy and their gradient; no LoRA gradient exists yet) or later in
    backward, once the logits are freed (LoRA gradients filling up, the layer being
    recomputed, a dequantized weight). Adding both overstated a step's peak by up to 97 %
    against the CPU measurement (benchmarks/activation_accuracy.py). The smaller side's
    terms keep their size in ``off_peak_bytes`` and count 0.
    """
    backward_bytes = sum(t.bytes for t in backward)
    if logits.bytes >= backward_bytes:
        peak, off = [logits], backward
        why = "not at the peak: the logits and loss need more, and are freed before backward"
    else:
        peak, off = backward, [logits]
        why = "not at the peak: freed before the backward pass needs its memory"
    off = [replace(t, bytes=0, off_peak_bytes=t.bytes, note=f"{t.note}; {why}") for t in off]
    return peak + off


def _capacity(device) -> int | None:
    if device.kind == "cuda" and device.gpu is not None:
        return int(device.gpu.free_bytes)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a dependency
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def _verdict(total: int, capacity: int | None) -> str:
    if capacity is None or total <= COEFFICIENTS.tight_fraction * capacity:
        return "fits"
    return "tight" if total <= capacity else "does_not_fit"


def _candidates(recipe: Recipe) -> list[tuple[str, dict]]:
    """Single changes that save memory, those that cost the result least first."""
    q, t, lora, d = recipe.quantization, recipe.training, recipe.lora, recipe.dataset
    out: list[tuple[str, dict]] = []
    if not t.gradient_checkpointing:
        out.append(
            ("turn on gradient checkpointing", {"training": {"gradient_checkpointing": True}})
        )
    if t.optimizer not in ("paged_adamw_8bit", "adamw_8bit"):
        out.append(
            ("use the paged_adamw_8bit optimizer", {"training": {"optimizer": "paged_adamw_8bit"}})
        )
    if q.mode == "4bit" and not q.double_quant:
        out.append(("turn on double quantization", {"quantization": {"double_quant": True}}))
    if t.batch_size > 1:
        b = t.batch_size // 2
        accum = t.grad_accum * 2 if t.batch_size % 2 == 0 else t.grad_accum
        out.append(
            (
                f"halve the batch size to {b} (grad_accum {accum} keeps the effective batch)",
                {"training": {"batch_size": b, "grad_accum": accum}},
            )
        )
    if q.mode != "none" and q.fp32_upcast:
        out.append(
            (
                "turn off the fp32 upcast of non-quantized weights",
                {"quantization": {"fp32_upcast": False}},
            )
        )
    if d.max_length >= 16:
        m = d.max_length // 2
        out.append((f"shorten max_length to {m} tokens", {"dataset": {"max_length": m}}))
    if lora.r > 1:
        out.append((f"lower the LoRA rank to {lora.r // 2}", {"lora": {"r": lora.r // 2}}))
    if q.mode == "none":
        out.append(("quantize the base model to 4-bit", {"quantization": {"mode": "4bit"}}))
    elif q.mode == "8bit":
        out.append(
            (
                "quantize the base model to 4-bit instead of 8-bit",
                {"quantization": {"mode": "4bit"}},
            )
        )
    return out


# Each candidate at most halves a number, so this bounds even a batch of 4096 at length 65536.
_MAX_COMBINED_STEPS = 64


def _deep_cut(change: dict) -> bool:
    return (
        change.get("dataset", {}).get("max_length", 256) < 256
        or change.get("lora", {}).get("r", 8) < 8
    )


def _describe(recipe: Recipe, changes: dict) -> str:
    """The net effect of ``changes`` on ``recipe``, one "key old → new" per changed key."""
    parts = []
    for section, values in changes.items():
        for key, value in values.items():
            old = getattr(getattr(recipe, section), key)
            if old != value:
                parts.append(f"{section}.{key} {old} → {value}")
    return "; ".join(parts)


def _merge(changes: dict, more: dict) -> dict:
    merged = {k: dict(v) for k, v in changes.items()}
    for section, values in more.items():
        merged.setdefault(section, {}).update(values)
    return merged


def _changed(recipe: Recipe, changes: dict) -> Recipe:
    """``recipe.with_changes(**changes)`` without re-validation (the candidates are valid)."""
    sections = {name: replace(getattr(recipe, name), **values) for name, values in changes.items()}
    return replace(recipe, **sections)


def _advice(
    shape: ModelShape, recipe: Recipe, device, current: MemoryEstimate
) -> tuple[str, dict | None]:
    """The one change that makes it fit, found by re-estimating each candidate, as text and
    as recipe changes (None when no change is named that makes it fit)."""
    candidates = _candidates(recipe)
    tight: tuple[str, MemoryEstimate, dict] | None = None
    for label, changes in candidates:
        est = estimate(shape, _changed(recipe, changes), device, _advise=False)
        if est.verdict == "fits":
            return f"To fit: {label} (estimate {units.format_bytes(est.total_bytes)}).", changes
        if est.verdict == "tight" and tight is None:
            tight = (label, est, changes)
    if current.verdict == "tight":
        text = "Tight: under 10% headroom, so fragmentation may still run out of memory" + (
            f"; {tight[0]} would leave a little more room." if tight else "."
        )
        return text, None
    if tight:
        text = (
            f"To fit (tightly): {tight[0]} (estimate {units.format_bytes(tight[1].total_bytes)})."
        )
        return text, tight[2]
    # Several changes together: keep applying the cheapest saving left (halving the batch,
    # the length or the rank again and again) until it fits, so a recipe too large on two
    # counts at once still gets a change that makes it fit.
    changes: dict = {}
    tight_together: tuple[dict, MemoryEstimate] | None = None
    est = current
    for _ in range(_MAX_COMBINED_STEPS):
        left = _candidates(_changed(recipe, changes))
        if not left:
            break
        # Shorter than 256 tokens or a rank under 8 costs more than any other saving.
        left = [c for c in left if not _deep_cut(c[1])] or left
        changes = _merge(changes, left[0][1])
        est = estimate(shape, _changed(recipe, changes), device, _advise=False)
        if est.verdict == "fits":
            break
        if est.verdict == "tight" and tight_together is None:
            tight_together = (changes, est)  # taken if nothing further makes it fit
    if est.verdict != "fits" and tight_together is not None:
        changes, est = tight_together
    if est.verdict != "does_not_fit":
        return (
            f"No single change is enough; together: {_describe(recipe, changes)} "
            f"(estimate {units.format_bytes(est.total_bytes)}).",
            changes,
        )
    need = current.total_bytes - (current.capacity_bytes or 0)
    return (
        f"Does not fit even with every saving applied ({units.format_bytes(est.total_bytes)}); "
        f"it needs {units.format_bytes(need)} more than is free. Pick a smaller model or a device "
        "with more memory.",
        None,
    )


# --------------------------------------------------------------------------- presenting


VERDICT_TEXT = {
    "fits": "fits",
    "tight": "tight (over 90% of capacity)",
    "does_not_fit": "does NOT fit",
}


def format_table(est: MemoryEstimate) -> str:
    """A plain-text table, largest terms first, then total, capacity, verdict and advice."""
    rows = [(t.label, units.format_bytes(t.bytes), t.note) for t in est.largest_first()]
    width = max([len(r[0]) for r in rows] + [len("Total")])
    lines = [f"{'Term'.ljust(width)}  {'Size':>10}  Note", "-" * (width + 40)]
    lines += [f"{label.ljust(width)}  {size:>10}  {note}" for label, size, note in rows]
    lines.append("-" * (width + 40))
    lines.append(f"{'Total'.ljust(width)}  {units.format_bytes(est.total_bytes):>10}")
    off_peak = est.off_peak_terms()
    if off_peak:
        lines.append(
            "Not at the peak (in use during a step, counted 0): "
            + ", ".join(f"{t.label} {units.format_bytes(t.off_peak_bytes)}" for t in off_peak)
        )
    lines.append(
        f"{'Loaded weights'.ljust(width)}  {units.format_bytes(est.weights_bytes):>10}  "
        f"({est.weights_bytes:,} bytes)"
    )
    cap_label = "Free GPU memory" if est.device != "CPU" else "Available RAM"
    lines.append(
        f"{cap_label.ljust(width)}  {units.format_bytes(est.capacity_bytes):>10}  {est.device}"
    )
    lines.append(f"Verdict: {VERDICT_TEXT.get(est.verdict, est.verdict)}")
    if est.advice:
        lines.append(f"Advice: {est.advice}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- measuring


def measure_model_bytes(model) -> int:
    """Every byte the tensors of a loaded model hold, shared storage counted once.

    Parameters, buffers, and for each bitsandbytes 4-bit weight its ``quant_state``: absmax,
    code table and, with double quantization, the nested absmax, nested code and offset;
    for 8-bit weights the row scales (SCB). Unlike ``get_memory_footprint()`` this counts
    the quantization state, so it sees what double quantization saves.
    """
    seen: dict[tuple[str, int], int] = {}

    def add(tensor) -> None:
        if tensor is None or not hasattr(tensor, "untyped_storage"):
            return
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        seen[key] = max(seen.get(key, 0), storage.nbytes())

    for tensor in model.parameters():
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            add(state.absmax)
            add(state.code)
            add(getattr(state, "offset", None))
            nested = getattr(state, "state2", None)
            if nested is not None:
                add(nested.absmax)
                add(nested.code)
        add(getattr(tensor, "SCB", None))
        add(getattr(tensor, "CB", None) if getattr(tensor, "CB", None) is not tensor else None)
    for tensor in model.buffers():
        add(tensor)
    for module in model.modules():
        # LLM.int8 layers may keep the row scales on the layer state rather than the weight
        state = getattr(module, "state", None)
        for attr in ("SCB", "CB"):
            add(getattr(state, attr, None) if state is not None else None)
    return sum(seen.values())
