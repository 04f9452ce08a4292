"""The memory estimator against models really loaded with transformers + bitsandbytes on CPU."""

from __future__ import annotations

import dataclasses

import pytest

from studio.core import memory
from studio.core.gpu import GpuInfo
from studio.core.memory import (
    COEFFICIENTS,
    MemoryEstimate,
    estimate,
    format_table,
    lora_targets,
    measure_model_bytes,
)
from studio.core.models import read_shape, resolve_model
from studio.core.quant import CPU, DeviceTarget, make_bnb_config, resolve_compute_dtype, torch_dtype
from studio.core.recipe import BUILTIN_MODEL, Recipe

GIB = 1024**3


def _recipe(**quant) -> Recipe:
    return Recipe().with_changes(quantization=quant) if quant else Recipe()


def _load(folder, recipe: Recipe, device=CPU):
    """The model as the engine loads it: the recipe's bnb config, dtype = compute dtype."""
    from transformers import AutoModelForCausalLM

    dtype = resolve_compute_dtype(recipe.quantization.compute_dtype, device)
    return AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=make_bnb_config(recipe.quantization, dtype),
        dtype=torch_dtype(dtype),
        device_map="cpu",
    )


def _gpu(free_bytes: int, capability=(8, 6)) -> DeviceTarget:
    gpu = GpuInfo(0, "Simulated GPU", max(free_bytes, 1), free_bytes, 0, capability, None, True)
    return DeviceTarget("cuda", gpu)


# --------------------------------------------------------------------------- weights vs reality

SETTINGS = [
    dict(mode="4bit", quant_type=qt, double_quant=dq, compute_dtype="bfloat16")
    for qt in ("nf4", "fp4")
    for dq in (True, False)
]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize(
    "quant", SETTINGS, ids=lambda q: f"{q['quant_type']}-dq{q['double_quant']}"
)
def test_weights_match_the_loaded_model(tiny_models, kind, quant):
    recipe = _recipe(**quant)
    est = estimate(read_shape(tiny_models[kind]), recipe, CPU)
    measured = measure_model_bytes(_load(tiny_models[kind], recipe))
    assert abs(est.weights_bytes - measured) <= 0.01 * measured
    assert est.weights_bytes == measured  # in fact exact: the layout is bitsandbytes' own


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize(
    "quant",
    [
        dict(mode="8bit", compute_dtype="bfloat16"),
        dict(mode="none", compute_dtype="bfloat16"),
        dict(mode="4bit", compute_dtype="float32"),
    ],
    ids=["8bit", "none", "4bit-fp32"],
)
def test_weights_match_in_other_modes(tiny_models, kind, quant):
    recipe = _recipe(**quant)
    est = estimate(read_shape(tiny_models[kind]), recipe, CPU)
    assert est.weights_bytes == measure_model_bytes(_load(tiny_models[kind], recipe))


def test_get_memory_footprint_undercounts_the_quantization_state(tiny_models):
    """Why measure_model_bytes exists: the footprint misses absmax, code tables and constants,
    so it reads the same with and without double quantization."""
    folder = tiny_models["llama"]
    with_dq = _load(folder, _recipe(double_quant=True, compute_dtype="bfloat16"))
    without = _load(folder, _recipe(double_quant=False, compute_dtype="bfloat16"))
    assert with_dq.get_memory_footprint() == without.get_memory_footprint()
    assert with_dq.get_memory_footprint() < measure_model_bytes(with_dq)
    assert measure_model_bytes(with_dq) != measure_model_bytes(without)


def test_measure_counts_tied_embeddings_once(tiny_models):
    model = _load(tiny_models["qwen2"], _recipe(mode="none", compute_dtype="float32"))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    unique = sum(p.numel() for p in model.parameters()) * 4
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert measure_model_bytes(model) == unique + buffers


@pytest.mark.slow
def test_builtin_model_weights_are_the_documented_figures():
    """MEMORY_MODEL.md: SmolLM2-135M NF4 bf16 holds 111,692,152 bytes with double quant and
    116,426,752 without; get_memory_footprint reads 109,777,792 for both."""
    folder = resolve_model(BUILTIN_MODEL).path
    shape = read_shape(folder)
    for double_quant, expected in ((True, 111_692_152), (False, 116_426_752)):
        recipe = _recipe(quant_type="nf4", double_quant=double_quant, compute_dtype="bfloat16")
        model = _load(folder, recipe)
        assert measure_model_bytes(model) == expected
        assert model.get_memory_footprint() == 109_777_792
        assert estimate(shape, recipe, CPU).weights_bytes == expected
        del model


@pytest.mark.slow
def test_builtin_model_fp4_matches():
    folder = resolve_model(BUILTIN_MODEL).path
    recipe = _recipe(quant_type="fp4", double_quant=True, compute_dtype="bfloat16")
    measured = measure_model_bytes(_load(folder, recipe))
    assert (
        abs(estimate(read_shape(folder), recipe, CPU).weights_bytes - measured) <= 0.01 * measured
    )


# --------------------------------------------------------------------------- terms


def test_fp32_upcast_grows_the_non_quantized_term_by_the_16bit_params(tiny_models):
    shape = read_shape(tiny_models["llama"])
    off = estimate(shape, _recipe(fp32_upcast=False, compute_dtype="bfloat16"), CPU)
    on = estimate(shape, _recipe(fp32_upcast=True, compute_dtype="bfloat16"), CPU)
    sixteen_bit = sum(p.numel for p in shape.params if p.kind != "quantizable_linear")
    assert on.term("non_quantized").bytes - off.term("non_quantized").bytes == 2 * sixteen_bit
    assert on.weights_bytes == off.weights_bytes  # what is loaded does not change
    fp32 = estimate(shape, _recipe(fp32_upcast=True, compute_dtype="float32"), CPU)
    assert fp32.term("non_quantized").bytes == 4 * sixteen_bit == on.term("non_quantized").bytes


def test_fp32_upcast_matches_peft_preparation(tiny_models):
    """The upcast term is what prepare_model_for_kbit_training really leaves in memory."""
    from peft import prepare_model_for_kbit_training

    folder = tiny_models["qwen2"]
    recipe = _recipe(fp32_upcast=True, compute_dtype="bfloat16")
    model = prepare_model_for_kbit_training(_load(folder, recipe), use_gradient_checkpointing=False)
    est = estimate(read_shape(folder), recipe, CPU)
    quant = sum(est.term(k).bytes for k in ("quantized_linears", "quant_absmax", "quant_constants"))
    expected = quant + est.term("non_quantized").bytes + est.term("buffers").bytes
    assert measure_model_bytes(model) == expected


@pytest.mark.parametrize("targets", ["all-linear", ("q_proj", "v_proj"), ("down_proj",)], ids=str)
@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_params_match_peft(tiny_models, targets, use_dora):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tiny_models["llama"]
    recipe = Recipe().with_changes(lora={"r": 4, "target_modules": targets, "use_dora": use_dora})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            target_modules=targets if isinstance(targets, str) else list(targets),
            use_dora=use_dora,
            task_type="CAUSAL_LM",
        ),
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    est = estimate(read_shape(folder), recipe, CPU)
    assert est.term("lora_weights").bytes == 4 * trainable
    assert est.term("lora_grads").size_bytes == 4 * trainable


def test_all_linear_leaves_out_lm_head_but_lists_match_suffixes(tiny_models):
    shape = read_shape(tiny_models["gpt2"])
    assert all(not t.is_output for t in lora_targets(shape, "all-linear"))
    assert len(lora_targets(shape, "all-linear")) == 8
    assert [t.name for t in lora_targets(shape, ("c_proj",))] == [
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.attn.c_proj",
        "transformer.h.1.mlp.c_proj",
    ]


def _state_bytes(optimizer) -> int:
    """Bytes of an optimizer's state tensors, shared storage once, torch's step scalars apart."""
    seen = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if key != "step" and hasattr(value, "untyped_storage"):
                storage = value.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize(
    "optimizer", ["adamw_torch", "paged_adamw_32bit", "adamw_8bit", "paged_adamw_8bit"]
)
@pytest.mark.parametrize("r", [2, 64])
def test_optimizer_state_matches_the_real_optimizer(tiny_models, optimizer, r):
    """r=2: every LoRA tensor is under 4096 elements (8-bit optimizers keep them 32-bit);
    r=64: most are above, some (k/v lora_B: 32 x 64) below."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tiny_models["llama"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=r, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    params = [p for p in model.parameters() if p.requires_grad]
    classes = {
        "adamw_torch": torch.optim.AdamW,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
    }
    real = classes[optimizer](params, lr=1e-4)
    for p in params:
        p.grad = torch.randn_like(p)
    real.step()
    recipe = Recipe().with_changes(lora={"r": r}, training={"optimizer": optimizer})
    est = estimate(read_shape(folder), recipe, CPU)
    assert est.term("optimizer").bytes == _state_bytes(real)


def _total(shape, recipe, device=CPU) -> int:
    return estimate(shape, recipe, device).total_bytes


@pytest.fixture(scope="module")
def medium_shape(tmp_path_factory):
    """A Llama-shaped model large enough for realistic ratios; only its config is needed."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("medium-llama")
    LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=4,
    ).save_pretrained(folder)
    return read_shape(folder)


def test_double_quant_costs_more_than_it_saves_on_tiny_tensors(tiny_models, medium_shape):
    """Double quantization saves ~0.37 bit per weight but adds ~1 KiB of constants per
    tensor: on 64x64 test linears that is a net loss, on real sizes a clear saving."""
    tiny = read_shape(tiny_models["llama"])
    on, off = (estimate(tiny, _recipe(double_quant=dq), CPU).weights_bytes for dq in (True, False))
    assert on > off
    on, off = (estimate(medium_shape, _recipe(double_quant=dq), CPU) for dq in (True, False))
    saved = off.weights_bytes - on.weights_bytes
    assert saved == pytest.approx(medium_shape.quantizable_params * 0.373 / 8, rel=0.02)


def test_each_toggle_moves_the_estimate_the_right_way(medium_shape):
    shape = medium_shape
    # a large-model starting point: each toggle below is a step away from it
    base = Recipe().with_changes(
        quantization={"compute_dtype": "bfloat16"},
        training={
            "batch_size": 2,
            "gradient_checkpointing": True,
            "optimizer": "paged_adamw_8bit",
        },
        dataset={"max_length": 512},
    )
    est = estimate(shape, base, CPU)

    nf4_fp4 = estimate(shape, base.with_changes(quantization={"quant_type": "fp4"}), CPU)
    assert nf4_fp4.weights_bytes == est.weights_bytes and nf4_fp4.total_bytes == est.total_bytes

    no_dq = estimate(shape, base.with_changes(quantization={"double_quant": False}), CPU)
    assert no_dq.weights_bytes > est.weights_bytes

    fp32 = estimate(shape, base.with_changes(quantization={"compute_dtype": "float32"}), CPU)
    assert fp32.weights_bytes > est.weights_bytes and fp32.total_bytes > est.total_bytes

    def more(section: str, key: str, value) -> bool:
        return _total(shape, base.with_changes(**{section: {key: value}})) > est.total_bytes

    assert more("lora", "r", 64)
    assert more("training", "batch_size", 8)
    assert more("dataset", "max_length", 2048)
    assert more("training", "gradient_checkpointing", False)
    assert more("training", "optimizer", "adamw_torch")
    assert not more("quantization", "fp32_upcast", False)
    # without quantization there is no k-bit preparation (no upcast): compare like with like.
    # Totals on a GPU: on the CPU the process's file pages and runtime (cpu_file_pages,
    # cpu_runtime) are not GPU memory and blur what quantizing less costs.
    plain = base.with_changes(quantization={"fp32_upcast": False})
    gpu = _gpu(80 * 2**30)
    for mode in ("8bit", "none"):
        other = plain.with_changes(quantization={"mode": mode})
        assert estimate(shape, other, CPU).weights_bytes > est.weights_bytes
        assert _total(shape, other, gpu) > _total(shape, plain, gpu), mode


def test_activation_terms_scale_with_tokens(tiny_models):
    shape = read_shape(tiny_models["llama"])
    base = Recipe().with_changes(
        training={"gradient_checkpointing": True}, dataset={"max_length": 512}
    )
    one = estimate(shape, base.with_changes(training={"batch_size": 1}), CPU)
    four = estimate(shape, base.with_changes(training={"batch_size": 4}), CPU)
    assert one.term("recompute").size_bytes > 0  # checkpointing on: the recompute term scales too
    for key in ("activations", "logits", "recompute"):
        assert four.term(key).size_bytes == pytest.approx(4 * one.term(key).size_bytes, rel=1e-6)
    assert four.term("lora_weights") == one.term("lora_weights")
    logits = COEFFICIENTS.logits_bytes_16bit * 512 * shape.vocab_size
    assert one.term("logits").size_bytes == int(logits)


def test_logits_depend_on_the_compute_dtype_not_on_the_upcast(tiny_models):
    # Measured on the CPU (benchmarks/activation_accuracy.py): the same peak with and without
    # the upcast; only float32 compute uses the 32-bit figure.
    shape = read_shape(tiny_models["llama"])

    def logits(**quantization):
        recipe = Recipe().with_changes(quantization=quantization)
        return estimate(shape, recipe, CPU).term("logits").size_bytes

    assert logits(fp32_upcast=True) == logits(fp32_upcast=False)
    tokens = Recipe().training.batch_size * Recipe().dataset.max_length
    assert logits(compute_dtype="float32") == int(
        COEFFICIENTS.logits_bytes_32bit * tokens * shape.vocab_size
    )


def test_fixed_costs_follow_the_device(tiny_models):
    shape = read_shape(tiny_models["llama"])
    cpu = estimate(shape, Recipe(), CPU)
    gpu = estimate(shape, Recipe(), _gpu(80 * GIB))
    cpu_keys, gpu_keys = {t.key for t in cpu.terms}, {t.key for t in gpu.terms}
    assert cpu_keys - gpu_keys == {"cpu_runtime"}
    assert gpu_keys - cpu_keys == {"cuda_context", "allocator"}
    assert gpu.term("cuda_context").bytes == COEFFICIENTS.cuda_context_bytes
    # on the CPU the measured peak is the engine's resident memory, runtime included
    assert cpu.term("cpu_runtime").bytes == (
        COEFFICIENTS.cpu_runtime_bytes + COEFFICIENTS.cpu_run_overhead_bytes
    )
    assert cpu.device == "CPU" and cpu.capacity_bytes > 0
    assert gpu.capacity_bytes == 80 * GIB


def test_coefficients_are_one_replaceable_block(tiny_models, monkeypatch):
    import studio.core.memory as memory

    shape = read_shape(tiny_models["llama"])
    before = estimate(shape, Recipe(), CPU).term("logits").size_bytes
    monkeypatch.setattr(
        memory, "COEFFICIENTS", dataclasses.replace(COEFFICIENTS, logits_bytes_16bit=24.0)
    )
    assert estimate(shape, Recipe(), CPU).term("logits").size_bytes == 2 * before


# --------------------------------------------------------------------------- fit and advice


def test_verdicts_against_simulated_gpu_capacity(tiny_models):
    shape = read_shape(tiny_models["llama"])
    recipe = Recipe()
    total = _total(shape, recipe, _gpu(100 * GIB))  # the CUDA terms do not depend on capacity

    fits = estimate(shape, recipe, _gpu(2 * total))
    assert (fits.verdict, fits.fits, fits.advice) == ("fits", True, None)

    tight = estimate(shape, recipe, _gpu(int(total / 0.95)))
    assert (tight.verdict, tight.fits) == ("tight", True)
    assert tight.advice and "Tight" in tight.advice

    too_small = estimate(shape, recipe, _gpu(int(total * 0.5)))
    assert (too_small.verdict, too_small.fits) == ("does_not_fit", False)
    assert too_small.advice


def test_advice_names_the_change_that_fits(medium_shape):
    shape = medium_shape
    recipe = Recipe().with_changes(
        training={"gradient_checkpointing": False, "batch_size": 8}, dataset={"max_length": 1024}
    )
    with_ckpt = recipe.with_changes(training={"gradient_checkpointing": True})
    # room for the checkpointed run but not for the one without
    capacity = int(_total(shape, with_ckpt, _gpu(100 * GIB)) / 0.85)
    est = estimate(shape, recipe, _gpu(capacity))
    assert est.verdict == "does_not_fit"
    assert "gradient checkpointing" in est.advice

    # with checkpointing on already, the next saving that fits is proposed instead
    est2 = estimate(shape, with_ckpt, _gpu(int(_total(shape, with_ckpt, _gpu(100 * GIB)) * 0.8)))
    assert est2.verdict == "does_not_fit" and est2.advice.startswith("To fit")
    assert "gradient checkpointing" not in est2.advice


def test_advice_combines_repeated_savings_when_batch_and_length_are_both_too_large(
    medium_shape,
):
    shape = medium_shape
    recipe = Recipe().with_changes(
        training={
            "gradient_checkpointing": True,
            "optimizer": "paged_adamw_8bit",
            "batch_size": 32,
            "grad_accum": 1,
        },
        dataset={"max_length": 4096},
    )
    small = recipe.with_changes(
        training={"batch_size": 2, "grad_accum": 16}, dataset={"max_length": 1024}
    )
    gpu = _gpu(int(_total(shape, small, _gpu(100 * GIB)) / 0.8))
    # no single candidate (each halves once) is enough here
    for _, change in memory._candidates(recipe):
        assert estimate(shape, memory._changed(recipe, change), gpu).verdict == "does_not_fit"

    est = estimate(shape, recipe, gpu)
    assert est.verdict == "does_not_fit" and est.advice_changes, est.advice
    fixed = recipe.with_changes(**est.advice_changes)
    assert estimate(shape, fixed, gpu).verdict != "does_not_fit"
    assert "training.batch_size 32 →" in est.advice and "dataset.max_length 4096 →" in est.advice
    # the effective batch is kept while the batch is halved
    assert fixed.training.batch_size * fixed.training.grad_accum == 32


def test_advice_when_nothing_helps(tiny_models):
    est = estimate(read_shape(tiny_models["llama"]), Recipe(), _gpu(1024))
    assert est.verdict == "does_not_fit"
    assert "smaller model" in est.advice


def test_fake_gpu_from_environment(tiny_models, monkeypatch):
    from studio.core.gpu import discover_gpus
    from studio.core.quant import resolve_device

    monkeypatch.setenv(
        "QLORA_STUDIO_FAKE_GPUS",
        '[{"name": "NVIDIA GeForce RTX 2080 Ti", '
        '"total_mib": 11264, "free_mib": 10900, "compute_capability": [7, 5]}]',
    )
    device = resolve_device("auto", discover_gpus())
    est = estimate(read_shape(tiny_models["llama"]), Recipe(), device)
    assert est.capacity_bytes == 10900 * 1024**2
    assert est.compute_dtype == "float16"  # no bf16 below capability 8.0
    assert "RTX 2080 Ti" in est.device and est.verdict == "fits"


# --------------------------------------------------------------------------- presentation


def test_table_and_json(tiny_models):
    est = estimate(read_shape(tiny_models["llama"]), Recipe(), _gpu(100 * GIB))
    assert isinstance(est, MemoryEstimate)
    sizes = [t.bytes for t in est.largest_first()]
    assert sizes == sorted(sizes, reverse=True) and 0 not in sizes
    assert est.total_bytes == sum(t.bytes for t in est.terms)
    table = format_table(est)
    assert "Total" in table and "Verdict: fits" in table and "Free GPU memory" in table
    assert table.index(est.largest_first()[0].label) < table.index(est.largest_first()[-1].label)
    data = est.to_json_dict()
    for key in (
        "total_bytes",
        "weights_bytes",
        "terms",
        "device",
        "fits",
        "capacity_bytes",
        "verdict",
        "advice",
    ):
        assert key in data
    assert data["terms"]["quantized_linears"] == est.term("quantized_linears").bytes


def test_a_step_counts_the_larger_of_its_two_peaks(tiny_models):
    # The loss phase (saved activations + logits) and the backward phase (LoRA gradients +
    # recomputed layer + dequantized weight) never peak together (benchmarks/
    # activation_accuracy.py measured it): the total counts the larger, the other side counts
    # 0 and keeps its size for the table.
    tiny = read_shape(tiny_models["llama"])
    backward_keys = ("lora_grads", "recompute", "dequant")

    def step(shape, **changes):
        est = estimate(shape, Recipe().with_changes(**changes), CPU)
        logits = est.term("logits")
        backward = [est.term(k) for k in backward_keys]
        return est, logits, backward

    # SmolLM2's vocabulary on the tiny llama, long sequences, small rank: the logits win
    big_vocab = dataclasses.replace(tiny, vocab_size=49152)
    est, logits, backward = step(big_vocab, lora={"r": 8}, dataset={"max_length": 256})
    assert logits.bytes > 0 and logits.off_peak_bytes == 0
    assert sum(t.size_bytes for t in backward) < logits.bytes
    assert all(t.bytes == 0 for t in backward)
    assert est.total_bytes == sum(t.bytes for t in est.terms)
    assert "Not at the peak" in format_table(est) and "LoRA gradients" in format_table(est)
    # its own 320-entry vocabulary, short sequences, large rank: the backward pass wins
    est, logits, backward = step(tiny, lora={"r": 64}, dataset={"max_length": 16})
    assert logits.bytes == 0 and logits.off_peak_bytes > 0
    assert sum(t.bytes for t in backward) > logits.off_peak_bytes
    assert est.to_json_dict()["off_peak_terms"] == {"logits": logits.off_peak_bytes}
    # the step's share is exactly saved activations + the larger side
    expected = est.term("activations").bytes + max(
        logits.size_bytes, sum(t.size_bytes for t in backward)
    )
    assert sum(est.term(k).bytes for k in ("activations", "logits", *backward_keys)) == expected


def test_only_gradient_checkpointing_recomputes_a_layer(tiny_models):
    shape = read_shape(tiny_models["llama"])
    on = estimate(shape, Recipe().with_changes(training={"gradient_checkpointing": True}), CPU)
    off = estimate(shape, Recipe().with_changes(training={"gradient_checkpointing": False}), CPU)
    assert on.term("recompute").size_bytes > 0
    assert off.term("recompute").size_bytes == 0
    assert off.term("activations").bytes > on.term("activations").bytes


def test_mapped_checkpoint_pages_count_on_the_cpu_without_the_upcast(tiny_models):
    # Without the upcast the non-quantized weights stay views of the mapped checkpoint, so the
    # file's pages stay resident (measured on the CPU: benchmarks/whole_run_accuracy.py).
    shape = read_shape(tiny_models["llama"])
    base = Recipe().with_changes(quantization={"compute_dtype": "bfloat16"})

    def keys(recipe, device=CPU):
        return {t.key for t in estimate(shape, recipe, device).terms}

    off = base.with_changes(quantization={"fp32_upcast": False})
    assert "cpu_file_pages" not in keys(base)
    assert "cpu_file_pages" in keys(off)
    assert estimate(shape, off, CPU).term("cpu_file_pages").bytes == 2 * shape.quantizable_params
    assert "cpu_file_pages" not in keys(off.with_changes(quantization={"compute_dtype": "float32"}))
    assert "cpu_file_pages" not in keys(off, _gpu(80 * GIB))  # host pages: not GPU memory
