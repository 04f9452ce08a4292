"""The training engine end to end on the CPU: real 4-bit bitsandbytes, real PEFT, real Trainer.

Tiny random models (tests/tiny_models.py) keep each run to seconds; one slow test runs the
shipped recipe on the built-in model. No test asserts a duration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_helpers import collect, losses_by_step, tiny_recipe  # noqa: E402

from studio.core.bundle import read_bundle  # noqa: E402
from studio.core.engine import EngineRunner  # noqa: E402
from studio.core.engine.checkpoints import (  # noqa: E402
    checkpoints_dir,
    list_checkpoints,
    write_manifest,
)
from studio.core.events import (  # noqa: E402
    CheckpointSaved,
    EvalLogged,
    Failed,
    Finished,
    Paused,
    PhaseChanged,
    Resumed,
    StepLogged,
    Stopped,
)
from studio.core.phases import ENGINE_PHASES, Phase  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference_run(tiny_models, tmp_path_factory):
    """One uninterrupted run of the tiny recipe: its recipe, events and bundle."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = tiny_recipe(tmp, tiny_models["llama"])
    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner)
    runner.join()
    return recipe, events, Path(recipe.output.dir), runner.exitcode


def test_run_reports_phases_steps_and_finishes(reference_run):
    recipe, events, bundle_dir, exitcode = reference_run
    failures = [e for e in events if isinstance(e, Failed)]
    assert not failures, failures[0].details
    assert isinstance(events[-1], Finished) and exitcode == 0
    phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    # Every engine phase in order; a folder model needs no conversion.
    assert order == [p for p in ENGINE_PHASES if p is not Phase.CONVERTING]
    assert all(isinstance(p, Phase) for p in phases), "phases are the enum, end to end"
    steps = [e for e in events if isinstance(e, StepLogged)]
    assert [e.step for e in steps] == list(range(1, 13))
    assert all(e.max_steps == 12 and e.tokens_per_second > 0 for e in steps)
    assert all(e.cuda_allocated_bytes is None for e in steps)  # trained on the CPU
    assert [e.step for e in events if isinstance(e, EvalLogged)] == [6, 12]
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [4, 8, 12]
    finished = events[-1]
    assert finished.step == 12 and finished.bundle_dir == str(bundle_dir)
    assert finished.peak_bytes > 0 and finished.estimate_bytes > 0


def test_loss_falls_on_learnable_data(reference_run):
    _, events, _, _ = reference_run
    losses = [e.loss for e in events if isinstance(e, StepLogged)]
    # A tiny random model cannot get far (its frozen head and norms cap the logits), but
    # half a nat in a dozen steps is far beyond noise.
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert losses[-1] < losses[0]


def test_bundle_is_complete_and_checkpoints_are_gone(reference_run):
    recipe, events, bundle_dir, _ = reference_run
    info = read_bundle(bundle_dir)
    names = {p.name for p in bundle_dir.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "recipe.toml",
        "quantization_config.json",
        "metrics.jsonl",
        "loss.png",
        "vram.png",
        "README.md",
        "manifest.json",
        "tokenizer_config.json",
    } <= names
    assert not any(n.startswith(".tmp-") for n in names)
    assert not any(p.name.startswith(".tmp-") for p in bundle_dir.parent.iterdir())
    assert not checkpoints_dir(bundle_dir).exists()
    assert info.recipe.quantization.compute_dtype == "float32"
    assert info.recipe.lora.r == 16
    assert info.quantization_config["bnb_4bit_quant_type"] == "nf4"
    assert info.quantization_config["bnb_4bit_use_double_quant"] is True
    steps = [m for m in info.metrics if m["type"] == "StepLogged"]
    assert [m["step"] for m in steps] == list(range(1, 13))
    assert len([m for m in info.metrics if m["type"] == "EvalLogged"]) == 2
    manifest = info.manifest
    assert manifest["estimate"]["total_bytes"] > 0
    assert manifest["measured_peak"]["kind"] == "cpu_peak_rss"
    assert manifest["measured_peak"]["bytes"] > 0
    assert manifest["libraries"]["peft"] and manifest["libraries"]["bitsandbytes"]
    assert set(manifest["files"]) >= {"adapter_model.safetensors", "loss.png", "README.md"}
    for png in ("loss.png", "vram.png"):
        assert (bundle_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (bundle_dir / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and "Final training loss" in card


def test_steps_carry_the_engine_rss_and_the_bundle_memory_plot_draws_it(reference_run):
    from studio.core.plots import RSS_LABEL, bundle_charts

    _, events, bundle_dir, _ = reference_run
    steps = [e for e in events if isinstance(e, StepLogged)]
    assert all(e.process_rss_bytes > 50 * 2**20 for e in steps)  # torch alone is more
    info = read_bundle(bundle_dir)
    _, memory = bundle_charts(info.metrics, estimate=info.manifest["estimate"])
    rss = next(s for s in memory.series if s.label == RSS_LABEL)
    assert list(rss.xs) == [e.elapsed_s for e in steps]
    assert list(rss.ys) == [e.process_rss_bytes / 2**30 for e in steps]


def test_bundle_loads_in_plain_peft(reference_run, tiny_models):
    """The engine's bundle loads with nothing but transformers + PEFT, quantized as trained."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _, _, bundle_dir, _ = reference_run
    quant = json.loads((bundle_dir / "quantization_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(
        tiny_models["llama"],
        quantization_config=BitsAndBytesConfig(**quant),
        dtype=torch.float32,
        device_map={"": "cpu"},
    )
    model = PeftModel.from_pretrained(base, str(bundle_dir))
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            bare = model(input_ids=ids).logits
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert not torch.allclose(tuned, bare)


def test_killed_run_resumes_with_the_same_trajectory(reference_run, tiny_models, tmp_path):
    recipe, ref_events, _, _ = reference_run
    recipe = recipe.with_changes(output={"dir": str(tmp_path / "bundle")})
    first = EngineRunner(recipe)
    first.start()
    events = collect(first, until=lambda e: isinstance(e, CheckpointSaved))
    first.kill()
    events += collect(first)
    first.join()
    assert isinstance(events[-1], Failed) and events[-1].error_type == "EngineKilled"
    assert "ended" not in events[-1].message or "killed" in events[-1].message
    assert list_checkpoints(checkpoints_dir(recipe.output.dir))

    second = EngineRunner(recipe, resume=True)
    second.start()
    resumed = collect(second)
    second.join()
    assert isinstance(resumed[-1], Finished), resumed[-1]
    assert resumed[-1].step == recipe.training.max_steps
    # The resumed process really trained the steps after the checkpoint...
    checkpoint_step = min(e.step for e in events if isinstance(e, CheckpointSaved))
    trained_again = [e.step for e in resumed if isinstance(e, StepLogged)]
    assert trained_again[-1] == 12 and checkpoint_step + 1 in trained_again
    # ...and the whole run's losses match the uninterrupted run's at every step.
    reference = losses_by_step(ref_events)
    info = read_bundle(recipe.output.dir)
    whole = losses_by_step(info.metrics)
    assert sorted(whole) == list(range(1, 13))
    for step, loss in whole.items():
        assert loss == pytest.approx(reference[step], rel=1e-3, abs=1e-3), step


def test_pause_holds_and_stop_keeps_a_checkpoint(tiny_models, tmp_path):
    recipe = tiny_recipe(
        tmp_path,
        tiny_models["qwen2"],
        training={"max_steps": 200, "save_steps": 100, "eval_steps": 100},
    )
    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner, until=lambda e: isinstance(e, StepLogged) and e.step >= 2)
    runner.pause()
    events += collect(runner, until=lambda e: isinstance(e, Paused))
    paused = events[-1]
    last_logged = max(e.step for e in events if isinstance(e, StepLogged))
    assert paused.step == last_logged  # held right after the step's log went out
    # While paused nothing moves: no steps arrive during a few seconds of polling.
    held = []
    for _ in range(15):
        held += runner.poll(timeout=0.2)
    assert not [e for e in held if isinstance(e, StepLogged)], held
    assert runner.is_running

    runner.resume()
    events = collect(runner, until=lambda e: isinstance(e, StepLogged))
    assert any(isinstance(e, Resumed) and e.step == paused.step for e in events)
    assert events[-1].step == paused.step + 1

    # A stop that arrives while paused saves the paused step and ends the job.
    runner.pause()
    again = collect(runner, until=lambda e: isinstance(e, Paused))[-1]
    runner.stop()
    events = collect(runner)
    runner.join()
    stopped = events[-1]
    assert isinstance(stopped, Stopped), stopped
    assert stopped.step == again.step
    assert stopped.checkpoint and Path(stopped.checkpoint).name == f"checkpoint-{again.step}"
    assert (Path(stopped.checkpoint) / "trainer_state.json").is_file()
    assert not [e for e in events if isinstance(e, StepLogged) and e.step > again.step]
    assert runner.exitcode == 0 and not runner.is_running
    assert not Path(recipe.output.dir).exists()


def test_malformed_dataset_is_refused_with_its_line(tiny_models, tmp_path):
    data = tmp_path / "broken.jsonl"
    good = json.dumps({"instruction": "Hi", "input": "", "output": "Hello"})
    data.write_text(f'{good}\n{good}\n{{"instruction": "oops",\n{good}\n')
    recipe = tiny_recipe(tmp_path, tiny_models["gpt2"], dataset={"path": str(data)})
    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner)
    runner.join()
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.error_type == "DatasetError" and failed.phase == "tokenizing"
    assert "line 3" in failed.message and "broken.jsonl" in failed.message
    assert not Path(recipe.output.dir).exists()


def test_existing_output_and_stale_checkpoints_are_refused(tiny_models, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_models["llama"])
    out = Path(recipe.output.dir)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    runner = EngineRunner(recipe)
    runner.start()
    failed = collect(runner)[-1]
    runner.join()
    assert isinstance(failed, Failed) and failed.error_type == "OutputExistsError"
    assert "--overwrite" in failed.message
    assert (out / "keep.txt").read_text() == "mine"

    out.rename(tmp_path / "moved")
    stale = checkpoints_dir(out) / "checkpoint-3"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    write_manifest(stale)  # complete: the engine writes this last into every checkpoint
    runner = EngineRunner(recipe)
    runner.start()
    failed = collect(runner)[-1]
    runner.join()
    assert isinstance(failed, Failed) and failed.error_type == "CheckpointError"
    assert "--resume" in failed.message and stale.exists()


def test_simulated_gpu_estimates_for_it_and_trains_on_the_cpu(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "QLORA_STUDIO_FAKE_GPUS",
        '[{"name": "NVIDIA GeForce RTX 2080 Ti", "total_mib": 11264, "free_mib": 10900, '
        '"compute_capability": [7, 5]}]',
    )
    recipe = tiny_recipe(
        tmp_path,
        tiny_models["llama"],
        quantization={"compute_dtype": "auto"},
        training={"device": "auto", "max_steps": 3},
    )
    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner)
    runner.join()
    assert isinstance(events[-1], Finished), events[-1]
    assert all(e.cuda_reserved_bytes is None for e in events if isinstance(e, StepLogged))
    info = read_bundle(recipe.output.dir)
    assert info.recipe.quantization.compute_dtype == "float16"  # no bf16 before Ampere
    assert "2080 Ti" in info.manifest["estimate"]["device"]
    assert info.manifest["estimate"]["capacity_bytes"] > 0
    assert info.manifest["measured_peak"]["kind"] == "cpu_peak_rss"


@pytest.mark.slow
def test_shipped_recipe_on_the_builtin_model(tmp_path):
    """The README's first run, shortened to 6 steps: built-in GGUF model, sample dataset."""
    from studio.core.chat import load_chat_model
    from studio.core.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "smollm2-sample.toml").with_changes(
        training={"max_steps": 6, "save_steps": 3, "eval_steps": 3},
        output={"dir": str(tmp_path / "smollm2")},
    )
    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner)
    runner.join()
    failures = [e for e in events if isinstance(e, Failed)]
    assert not failures, failures[0].details
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.step == 6
    losses = [e.loss for e in events if isinstance(e, StepLogged)]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0]
    info = read_bundle(finished.bundle_dir)
    assert info.recipe.model.source == "builtin:smollm2-135m-instruct"
    assert info.manifest["base_model"]["kind"] == "builtin"
    chat = load_chat_model(finished.bundle_dir, device="cpu")
    tuned = chat.generate("What is a comet?", max_new_tokens=12)
    bare = chat.generate("What is a comet?", max_new_tokens=12, adapter=False)
    assert tuned and bare
