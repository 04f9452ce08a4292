"""The per-GPU estimate with several processes, against the FSDP sharding arithmetic applied
to a real loaded model: each wrap unit's flat parameter (a decoder layer's tensors, each LoRA
matrix) padded to a multiple of N elements and split evenly; one layer gathered whole plus the
prefetched next, and the root unit gathered; DDP replicates everything and adds its buckets."""

from __future__ import annotations

import json
import math
import re

import pytest

from studio.core.memory import estimate
from studio.core.models import read_shape
from studio.core.quant import CPU
from studio.core.recipe import Recipe
from studio.core.scaling import (
    PREFETCHED_LAYERS,
    estimate_for,
    scaling_table,
    smallest_fitting_processes,
)


def _recipe(model_dir, **distributed):
    return Recipe().with_changes(
        model={"source": str(model_dir)},
        quantization={"compute_dtype": "float32", "fp32_upcast": False},
        lora={"r": 8, "dropout": 0.0},
        dataset={"max_length": 64},
        training={"batch_size": 2, "device": "cpu"},
        distributed=distributed,
    )


def _loaded_units(model_dir):
    """Bytes of each FSDP unit of the real model, loaded 4-bit with the quantized weights
    stored in the compute dtype (bnb_4bit_quant_storage), as FSDP-QLoRA loads it; and every
    LoRA matrix's element count from a real PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_storage=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=config, dtype=torch.float32, device_map={"": "cpu"}
    )
    units: dict[str, int] = {}
    for name, param in model.named_parameters():
        match = re.match(r"^(.*?\.\d+)\.", name)
        unit = match.group(1) if match else ""
        assert param.element_size() == 4  # one dtype per flat parameter, the storage dtype
        units[unit] = units.get(unit, 0) + param.numel()
    peft = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    lora = [p.numel() for n, p in peft.named_parameters() if p.requires_grad]
    return units, lora


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"], read_shape(tiny_models["llama"])


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_fsdp_terms_follow_the_sharding_arithmetic(llama, n):
    model_dir, shape = llama
    units, lora = _loaded_units(model_dir)
    est = estimate(shape, _recipe(model_dir, num_processes=n, strategy="fsdp"), CPU)
    assert est.processes == n and est.strategy == "fsdp"
    # Each unit's flat parameter: padded to a multiple of n elements, 1/n of it per GPU.
    assert est.term("fsdp_shards").bytes == sum(4 * math.ceil(e / n) for e in units.values())
    layers = [e for unit, e in units.items() if unit]
    assert len(layers) == shape.num_layers
    gathered = 4 * (PREFETCHED_LAYERS * max(layers) + units[""])
    assert est.term("fsdp_gathered").bytes == gathered
    lora_shard = sum(4 * math.ceil(e / n) for e in lora)
    assert est.term("lora_weights").bytes == lora_shard
    assert est.term("optimizer").bytes == 2 * lora_shard  # AdamW: two fp32 moments per shard
    assert est.term("lora_grads").size_bytes == lora_shard
    # The quantization state is not a parameter: whole on every GPU.
    single = estimate(shape, _recipe(model_dir), CPU)
    assert est.term("quant_absmax").bytes == single.term("quant_absmax").bytes
    assert est.term("activations").bytes == single.term("activations").bytes
    with pytest.raises(KeyError):
        est.term("quantized_linears")  # counted inside the layers' shards


def test_fsdp_cpu_offload_keeps_only_gathered_weights_on_the_gpu(llama):
    model_dir, shape = llama
    on = estimate(
        shape, _recipe(model_dir, num_processes=2, strategy="fsdp", cpu_offload=True), CPU
    )
    off = estimate(shape, _recipe(model_dir, num_processes=2, strategy="fsdp"), CPU)
    for key in ("fsdp_shards", "lora_weights", "optimizer"):
        assert on.term(key).bytes == 0 and off.term(key).bytes > 0
    assert on.term("fsdp_gathered").bytes == off.term("fsdp_gathered").bytes
    assert on.total_bytes < off.total_bytes


def test_ddp_replicates_and_adds_its_gradient_buckets(llama):
    model_dir, shape = llama
    single = estimate(shape, _recipe(model_dir), CPU)
    ddp = estimate(shape, _recipe(model_dir, num_processes=4), CPU)
    grads = single.term("lora_grads").size_bytes
    assert ddp.term("ddp_buckets").bytes == grads
    assert ddp.total_bytes == single.total_bytes + grads
    # On the CPU the processes of a machine share its RAM.
    assert ddp.capacity_bytes == pytest.approx(single.capacity_bytes / 4, rel=0.05)


def test_one_process_is_the_single_gpu_estimate(llama):
    model_dir, shape = llama
    single = estimate(shape, _recipe(model_dir), CPU)
    for strategy in ("ddp", "fsdp"):
        one = estimate(shape, _recipe(model_dir, num_processes=1, strategy=strategy), CPU)
        assert one.total_bytes == single.total_bytes and one.processes == 1


def _fake_gpu(monkeypatch, free_mib: int, count: int = 2):
    entry = {"name": "Test GPU", "total_mib": free_mib, "free_mib": free_mib}
    entry["compute_capability"] = [8, 6]
    monkeypatch.setenv("QLORA_STUDIO_FAKE_GPUS", json.dumps([entry] * count))
    from studio.core.gpu import discover_gpus
    from studio.core.quant import resolve_device

    return resolve_device("auto", discover_gpus())


def test_smallest_fitting_count_on_a_big_model(monkeypatch):
    """A 70B model on 24 GB cards: FSDP per-GPU figures fall with N towards what is gathered;
    the smallest N that fits is the first whose figure fits, and DDP never fits."""
    from studio.core.catalog import catalog_shape

    device = _fake_gpu(monkeypatch, 24564)
    shape = catalog_shape("catalog:llama-3.1-70b")
    recipe = Recipe().with_changes(
        model={"source": "catalog:llama-3.1-70b"},
        quantization={"fp32_upcast": False},
        dataset={"max_length": 2048},
        training={"batch_size": 1, "gradient_checkpointing": True},
        distributed={"strategy": "fsdp"},
    )
    table = scaling_table(shape, recipe, device, counts=(1, 2, 4, 8, 16))
    totals = [est.total_bytes for _, est in table]
    assert totals == sorted(totals, reverse=True)
    n = smallest_fitting_processes(shape, recipe, device)
    assert n is not None and n > 1
    assert estimate_for(shape, recipe, device, n).verdict != "does_not_fit"
    assert estimate_for(shape, recipe, device, n - 1).verdict == "does_not_fit"
    assert smallest_fitting_processes(shape, recipe, device, "ddp") is None
    offload = recipe.with_changes(distributed={"cpu_offload": True})
    assert smallest_fitting_processes(shape, offload, device) == 2


def test_estimate_command_shows_the_per_gpu_figure(tiny_models, monkeypatch, capsys):
    from studio.cli import main

    _fake_gpu(monkeypatch, 8192)
    args = ["estimate", "--model", str(tiny_models["llama"]), "--num-processes", "2"]
    assert main([*args, "--strategy", "fsdp", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["processes"] == 2 and data["strategy"] == "fsdp"
    assert data["terms"]["fsdp_shards"] > 0
    assert data["smallest_fitting_processes"] == {"ddp": 1, "fsdp": 1}
    assert main([*args, "--strategy", "ddp"]) == 0
    text = capsys.readouterr().out
    assert "Per GPU: 2 processes, DDP" in text and "DDP gradient buckets" in text
    assert "Fewest GPUs that fit: DDP: 1; FSDP: 1" in text


def test_the_session_shows_the_per_gpu_estimate_with_two_simulated_gpus(llama, monkeypatch):
    """What the window builds on: with two simulated GPUs, a recipe asking for two processes
    gets the per-GPU estimate, and the Qt-free helpers say what is inactive or blocked."""
    from studio.core.gpu import discover_gpus
    from studio.core.scaling import distributed_start_problem, inactive_distributed_fields
    from studio.core.session import Session

    model_dir, shape = llama
    _fake_gpu(monkeypatch, 8192, count=2)
    session = Session.create()
    session.set_recipe(_recipe(model_dir).with_changes(training={"device": "auto"}))
    session.model_ready(str(model_dir), None, shape)
    single = session.estimate
    assert single is not None and single.processes == 1
    session.edit("distributed.num_processes", 2)
    assert session.estimate.processes == 2 and session.estimate.strategy == "ddp"
    assert session.estimate.total_bytes > single.total_bytes  # DDP's buckets
    session.edit("distributed.strategy", "fsdp")
    assert session.estimate.term("fsdp_shards").bytes > 0
    gpus = len(discover_gpus().gpus)
    assert gpus == 2
    # Simulated GPUs train on the CPU, which runs both strategies.
    assert distributed_start_problem(session.recipe, session.device, gpus) == ""
    session.edit("distributed.strategy", "ddp")
    assert distributed_start_problem(session.recipe, session.device, gpus) == ""
    session.edit("distributed.num_processes", 3)
    problem = distributed_start_problem(session.recipe, session.device, gpus)
    assert problem == ""  # the CPU: processes are not GPUs
    session.edit("distributed.num_processes", 2)
    inactive = inactive_distributed_fields(session.recipe)
    assert "distributed.cpu_offload" in inactive and "distributed.strategy" not in inactive
    assert "distributed.main_process_ip" in inactive
    assert "distributed.strategy" in inactive_distributed_fields(_recipe(model_dir))


def test_a_run_on_several_gpus_is_monitored_per_gpu(monkeypatch):
    from studio.core.gpu import discover_gpus
    from studio.core.monitor import ResourceMonitor
    from studio.core.quant import resolve_device
    from studio.core.scaling import run_gpu_indices

    gpus = [
        {
            "name": f"Card {i}",
            "total_mib": 24576,
            "free_mib": 24576 - 1000 * (i + 1),
            "compute_capability": [8, 6],
        }
        for i in range(3)
    ]
    monkeypatch.setenv("QLORA_STUDIO_FAKE_GPUS", json.dumps(gpus))
    device = resolve_device("auto", discover_gpus())
    one = Recipe()
    assert run_gpu_indices(one, device) == (0,)
    assert run_gpu_indices(one, CPU) == ()
    two = one.with_changes(distributed={"num_processes": 2})
    assert run_gpu_indices(two, device) == (0, 1)
    picked = one.with_changes(distributed={"num_processes": 2, "gpus": "1,2"})
    assert run_gpu_indices(picked, device) == (1, 2)

    monitor = ResourceMonitor(device)
    try:
        monitor.watch(run_gpu_indices(one, device))
        assert monitor.sample(None).per_gpu_used == (), "one GPU: the device line is enough"
        monitor.watch(run_gpu_indices(picked, device))
        assert monitor.sample(None).per_gpu_used == ((1, 2000 << 20), (2, 3000 << 20))
    finally:
        monitor.close()
