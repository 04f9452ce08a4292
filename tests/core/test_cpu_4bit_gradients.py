"""Evaluation must not corrupt later training gradients on the CPU.

bitsandbytes repacks 4-bit weights for a faster CPU inference kernel (on CPUs with
AVX512-BF16) the first time a layer runs in eval mode without gradients; that kernel has no
autograd support, so training after an evaluation would get wrong gradients without an error.
The engine turns the repacking off right after loading (`keep_4bit_weights_trainable`).
"""

from __future__ import annotations

import pytest

from studio.core.engine.building import apply_lora, keep_4bit_weights_trainable
from studio.core.recipe import LoraSection


def _lora_grad_norms(model, batch) -> list[float]:
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return [p.grad.norm().item() for n, p in model.named_parameters() if p.requires_grad]


def _load(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_storage="uint8",
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(
        tiny_models["llama"], quantization_config=quant, dtype=torch.bfloat16, device_map="cpu"
    )


def _grads_before_and_after_an_evaluation(model) -> tuple[list[float], list[float]]:
    import torch

    torch.manual_seed(0)
    model = apply_lora(model, LoraSection(r=4, alpha=8, dropout=0.0))
    ids = torch.randint(3, model.config.vocab_size, (2, 16))
    batch = {"input_ids": ids, "labels": ids}
    before = _lora_grad_norms(model, batch)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # an evaluation forward, as the Trainer's evaluate() runs it
    return before, _lora_grad_norms(model, batch)


def test_gradients_after_an_evaluation_equal_those_before(tiny_models):
    model = _load(tiny_models)
    assert keep_4bit_weights_trainable(model) >= 0
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
    before, after = _grads_before_and_after_an_evaluation(model)
    assert after == pytest.approx(before, rel=1e-5)


def test_the_hazard_is_real_on_this_cpu_without_the_fix(tiny_models):
    """Documents why the fix exists; skipped where bitsandbytes would not repack."""
    model = _load(tiny_models)
    if not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules()):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    before, after = _grads_before_and_after_an_evaluation(model)
    assert after != pytest.approx(before, rel=1e-5)
