"""On a CUDA machine: the engine trains on the GPU, reports torch's memory figures per step,
and records the measured CUDA peak beside the estimate. Skipped without CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))


def test_tiny_run_on_cuda_reports_memory(tiny_models, tmp_path):
    from engine_helpers import collect, tiny_recipe

    from studio.core.bundle import read_bundle
    from studio.core.engine import EngineRunner
    from studio.core.events import Finished, StepLogged

    recipe = tiny_recipe(
        tmp_path,
        tiny_models["llama"],
        quantization={"compute_dtype": "auto"},
        training={"device": "cuda", "max_steps": 6, "optimizer": "paged_adamw_8bit"},
    )
    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner)
    runner.join()
    assert isinstance(events[-1], Finished), events[-1]
    steps = [e for e in events if isinstance(e, StepLogged)]
    assert steps and all(e.cuda_allocated_bytes and e.cuda_peak_bytes for e in steps)
    assert all(e.cuda_reserved_bytes >= e.cuda_allocated_bytes for e in steps)
    info = read_bundle(recipe.output.dir)
    assert info.manifest["measured_peak"]["kind"] == "cuda_peak_reserved_plus_context"
    assert info.manifest["measured_peak"]["bytes"] > 0
    assert info.manifest["run"]["torch_device"].startswith("cuda")
