"""The CPU activation model against the tensors autograd really saves, per decoder layer.

A tiny model is loaded and prepared as the engine does (NF4, bf16 compute, k-bit preparation
with or without the fp32 upcast, LoRA on all linears with or without dropout); one forward
runs under ``torch.autograd.graph.saved_tensors_hooks`` and the bytes of every distinct
storage saved inside the second decoder layer are counted. The estimator's per-layer figure
for the CPU must equal it.
"""

from __future__ import annotations

import itertools

import pytest

from studio.core.memory import _cpu_layer_bytes, _layer_linears, lora_targets
from studio.core.models import read_shape
from studio.core.recipe import Recipe


def saved_bytes_per_token_in_layer(folder, recipe: Recipe, layer: int = 1) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from studio.core.engine.building import (
        apply_lora,
        keep_4bit_weights_trainable,
        prepare_for_training,
    )
    from studio.core.quant import make_bnb_config

    model = AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=make_bnb_config(recipe.quantization, "bfloat16"),
        dtype=torch.bfloat16,
        device_map="cpu",
    )
    model.config.use_cache = False
    keep_4bit_weights_trainable(model)
    model = prepare_for_training(
        model, quantized=True, upcast=recipe.quantization.fp32_upcast, gradient_checkpointing=False
    )
    torch.manual_seed(0)
    model = apply_lora(model, recipe.lora)
    model.train()
    current = {"layer": None}
    for index, module in enumerate(model.base_model.model.model.layers):
        module.register_forward_pre_hook(lambda m, a, i=index: current.update(layer=i))
        module.register_forward_hook(lambda m, a, o: current.update(layer=None))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if current["layer"] == layer and key not in params and key not in saved:
            saved[key] = storage.nbytes()
        return tensor

    batch, seq = 2, 32
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    return sum(saved.values()) / (batch * seq)


@pytest.mark.parametrize(
    ("kind", "upcast", "dropout"),
    list(itertools.product(("llama", "qwen2"), (True, False), (0.05, 0.0))),
)
def test_cpu_layer_figure_is_what_autograd_saves(tiny_models, kind, upcast, dropout):
    recipe = Recipe().with_changes(
        quantization={"compute_dtype": "bfloat16", "fp32_upcast": upcast},
        lora={"r": 8, "alpha": 16, "dropout": dropout},
    )
    shape = read_shape(tiny_models[kind])
    layer = _layer_linears(shape)
    targets = [x for x in lora_targets(shape, "all-linear") if x in layer]
    inter = [x for x in layer if x.out_features == shape.intermediate_size]
    estimated = _cpu_layer_bytes(shape, recipe, 4 if upcast else 2, targets, inter)
    measured = saved_bytes_per_token_in_layer(tiny_models[kind], recipe)
    assert estimated == pytest.approx(measured, rel=0.02)
