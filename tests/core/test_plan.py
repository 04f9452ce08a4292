"""What fits on a GPU: `plan_table` and ``qlora-studio plan`` on simulated GPUs, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from studio.core.catalog import catalog_shape
from studio.core.gpu import discover_gpus, parse_fake_gpus
from studio.core.memory import estimate
from studio.core.plan import SEQ_STEP, plan_device, plan_table
from studio.core.quant import DeviceTarget
from studio.core.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
RTX_4090 = (
    '[{"name": "NVIDIA GeForce RTX 4090", "total_mib": 24564, "free_mib": 24000, '
    '"compute_capability": [8, 9]}]'
)
H100 = '{"name": "NVIDIA H100 80GB HBM3", "total_mib": 81559, "free_mib": 81000, "compute_capability": [9, 0]}'
SOME = {"smollm2-135m", "qwen2.5-1.5b", "llama-3.1-8b", "gemma-2-27b", "llama-3.1-70b"}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one shape cache for the module: shapes are read once
    root = tmp_path_factory.getbasetemp() / "plan-cache"
    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(root))


def _gpu(text: str) -> DeviceTarget:
    return DeviceTarget("cuda", parse_fake_gpus(text if text.startswith("[") else f"[{text}]")[0])


def test_plan_rows_say_what_fits_and_agree_with_the_estimate():
    device = _gpu(RTX_4090)
    rows = {row.name: row for row in plan_table(device, names=SOME)}
    assert set(rows) == SOME
    assert rows["smollm2-135m"].fits
    assert rows["llama-3.1-70b"].verdict == "does_not_fit"
    assert rows["llama-3.1-70b"].max_length is None and rows["llama-3.1-70b"].max_batch is None
    # the default recipe on an 8B model needs checkpointing on a 24 GB card; the advice says so
    eight = rows["llama-3.1-8b"]
    assert not eight.fits and "gradient checkpointing" in eight.advice
    assert eight.advice_changes == {"training": {"gradient_checkpointing": True}}
    for row in rows.values():
        shape = catalog_shape(row.name)
        recipe = Recipe().with_changes(model={"source": row.source})
        assert row.total_bytes == estimate(shape, recipe, device).total_bytes
        if row.max_length:  # the longest that fits: one step longer does not
            at = recipe.with_changes(dataset={"max_length": row.max_length})
            over = recipe.with_changes(dataset={"max_length": row.max_length + SEQ_STEP})
            assert estimate(shape, at, device).verdict == "fits"
            limit = shape.max_position_embeddings
            if row.max_length + SEQ_STEP <= limit:
                assert estimate(shape, over, device).verdict != "fits"
        if row.max_batch:
            at = recipe.with_changes(training={"batch_size": row.max_batch})
            over = recipe.with_changes(training={"batch_size": row.max_batch + 1})
            assert estimate(shape, at, device).verdict == "fits"
            assert estimate(shape, over, device).verdict != "fits"


def test_a_bigger_gpu_fits_more_and_longer():
    recipe = Recipe().with_changes(training={"gradient_checkpointing": True})
    small = {r.name: r for r in plan_table(_gpu(RTX_4090), recipe, names=SOME)}
    big = {r.name: r for r in plan_table(_gpu(H100), recipe, names=SOME)}
    assert sum(r.fits for r in big.values()) > sum(r.fits for r in small.values())
    for name in SOME:
        assert (big[name].max_length or 0) >= (small[name].max_length or 0)
    assert big["gemma-2-27b"].fits and not small["gemma-2-27b"].fits


def test_plan_device_takes_a_discovery_or_a_gpu(monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_FAKE_GPUS", RTX_4090)
    discovery = discover_gpus()
    assert plan_device(discovery).gpu.name == "NVIDIA GeForce RTX 4090"
    assert plan_device(discovery.gpus[0]).kind == "cuda"
    assert plan_device(discovery, "cpu").kind == "cpu"
    rows = plan_table(discovery, names={"smollm2-135m"})
    assert rows[0].capacity_bytes == discovery.gpus[0].free_bytes


def test_a_recipe_that_saves_memory_fits_longer_sequences():
    device = _gpu(RTX_4090)
    base = Recipe()
    lean = replace(base, training=replace(base.training, gradient_checkpointing=True))
    a = plan_table(device, base, names={"qwen2.5-1.5b"})[0]
    b = plan_table(device, lean, names={"qwen2.5-1.5b"})[0]
    assert b.max_length > a.max_length


def plan_cli(*args: str, fake_gpus: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QLORA_STUDIO_FAKE_GPUS"}
    env["PYTHONPATH"] = str(REPO)
    if fake_gpus is not None:
        env["QLORA_STUDIO_FAKE_GPUS"] = fake_gpus
    return subprocess.run(
        [sys.executable, "-m", "studio", "plan", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )


def test_plan_command_on_a_simulated_gpu_offline():
    out = plan_cli(fake_gpus=RTX_4090)
    assert out.returncode == 0, out.stderr
    assert "NVIDIA GeForce RTX 4090 (simulated)" in out.stdout
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "fits" in lines["SmolLM2-135M"]
    assert " no " in lines["Llama-3.1-70B"]
    assert "Llama-3.1-70B: Does not fit even with every saving applied" in out.stdout


def test_plan_command_json_with_simulated_and_gpu_index():
    out = plan_cli("--simulated", H100, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["device"] == "GPU 0: NVIDIA H100 80GB HBM3 (simulated)"
    rows = {row["name"]: row for row in data["rows"]}
    assert len(rows) >= 20 and rows["qwen2.5-7b"]["source"] == "catalog:qwen2.5-7b"
    assert rows["smollm2-135m"]["fits"] and rows["smollm2-135m"]["max_length"] >= 1024
    two = (
        RTX_4090[:-1]
        + ', {"name": "Tiny", "total_mib": 2048, "free_mib": 2000, '
        + ('"compute_capability": [8, 6]}]')
    )
    first = json.loads(plan_cli("--json", fake_gpus=two).stdout)
    second = json.loads(plan_cli("--json", "--gpu", "1", fake_gpus=two).stdout)
    assert "RTX 4090" in first["device"] and "Tiny" in second["device"]
    fits = [sum(r["fits"] for r in d["rows"]) for d in (first, second)]
    assert fits[0] > fits[1]


def test_plan_command_bad_input():
    out = plan_cli("--simulated", '{"name": "x"}')
    assert out.returncode == 2 and "total_mib" in out.stderr
    out = plan_cli("--gpu", "3", fake_gpus=RTX_4090)
    assert out.returncode == 2 and "cuda:3" in out.stderr


def test_estimate_command_accepts_a_catalog_model_as_a_plan():
    env = {k: v for k, v in os.environ.items() if k != "QLORA_STUDIO_FAKE_GPUS"}
    env.update(PYTHONPATH=str(REPO), QLORA_STUDIO_FAKE_GPUS=RTX_4090)
    out = subprocess.run(
        [sys.executable, "-m", "studio", "estimate", "--model", "catalog:llama-3.1-8b"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Llama-3.1-8B (plan)" in out.stdout and "Plan: only the model's config" in out.stdout
    assert "To fit: turn on gradient checkpointing" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "studio", "estimate", "--model", "catalog:llama-3.1-8b", "--json"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    data = json.loads(out.stdout)
    assert data["model"]["plan"] is True and data["model"]["kind"] == "catalog"
    assert data["verdict"] == "does_not_fit"
