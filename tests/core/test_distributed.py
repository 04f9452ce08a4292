"""Several processes through accelerate, on the CPU (gloo): the same recipe with one and two
processes at the same global batch gives the same losses; pause, stop and a kill act on every
rank; a run resumes with the same and with a different number of processes; the bundle is the
plain PEFT adapter a one-process run writes; FSDP-QLoRA runs on the CPU too. (Two processes
on two cores: about 4 minutes.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from engine_helpers import collect, losses_by_step, stop_after_step, tiny_recipe

from studio.core.bundle import read_bundle
from studio.core.engine import EngineRunner
from studio.core.engine.checkpoints import checkpoints_dir, list_checkpoints
from studio.core.engine.launch import accelerate_command
from studio.core.events import (
    CheckpointSaved,
    Failed,
    Finished,
    LogMessage,
    Paused,
    Resumed,
    StepLogged,
    Stopped,
)

# Float32 on the CPU, same examples per optimizer step; only the order of the reductions
# differs (DDP averages two half-batch gradients, one process one whole batch). Measured:
# at most 6e-7 apart over 6 steps. Stated tolerance: 1e-4 relative.
LOSS_RTOL = 1e-4


def _recipe(tmp_path, model_dir, processes: int, batch: int, **training):
    return tiny_recipe(
        tmp_path,
        model_dir,
        lora={"dropout": 0.0},  # dropout masks would differ between the ranks' RNGs
        dataset={"validation_split": 0.0},
        training={"batch_size": batch, "max_steps": 6, "save_steps": 3, **training},
        output={"dir": str(tmp_path / f"bundle-{processes}")},
        distributed={"num_processes": processes},
    )


def _run(recipe, **kwargs) -> list:
    runner = EngineRunner(recipe, **kwargs)
    runner.start()
    events = collect(runner)
    runner.join()
    return events


def _adapter(bundle_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(bundle_dir) / "adapter_model.safetensors"))


def test_accelerate_command_for_ddp_and_fsdp(tiny_models, tmp_path, capsys):
    recipe = _recipe(tmp_path, tiny_models["llama"], 2, 2)
    command = accelerate_command(recipe, "r.toml", resume=True, on_cpu=True)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and "--use_fsdp" not in command
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[-4:] == ["--module", "studio.core.engine.rank", "r.toml", "--resume"]
    fsdp = recipe.with_changes(distributed={"strategy": "fsdp", "cpu_offload": True})
    command = accelerate_command(fsdp, "r.toml", on_cpu=False)
    assert "--use_fsdp" in command and "--multi_gpu" not in command
    assert command[command.index("--fsdp_offload_params") + 1] == "true"
    assert command[command.index("--fsdp_cpu_ram_efficient_loading") + 1] == "true"
    on_cpu = accelerate_command(fsdp, "r.toml", on_cpu=True)
    assert on_cpu[on_cpu.index("--fsdp_sync_module_states") + 1] == "false"  # needs a GPU
    assert command[command.index("--fsdp_auto_wrap_policy") + 1] == "TRANSFORMER_BASED_WRAP"
    two_gpus = recipe.with_changes(distributed={"gpus": "2,3"})
    command = accelerate_command(two_gpus, "r.toml", on_cpu=False)
    assert command[command.index("--gpu_ids") + 1] == "2,3"
    # The command docs/cluster.md shows, printed for a recipe file.
    from studio.core.engine.launch import main
    from studio.core.recipe import save_recipe

    nodes = recipe.with_changes(
        distributed={"num_processes": 16, "num_machines": 2, "main_process_ip": "10.0.0.1"}
    )
    save_recipe(nodes, tmp_path / "cluster.toml")
    assert main([str(tmp_path / "cluster.toml"), "--cpu"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:3] == ["python", "-m", "accelerate.commands.launch"]
    assert printed[printed.index("--main_process_ip") + 1] == "10.0.0.1"
    assert printed[printed.index("--num_machines") + 1] == "2"
    bad = nodes.with_changes(distributed={"num_processes": 3})
    save_recipe(bad, tmp_path / "bad.toml")
    assert main([str(tmp_path / "bad.toml")]) == 2
    assert "distributed.num_processes" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tiny_models, tmp_path, capsys):
    """``qlora-studio train`` with num_processes = 2 (through accelerate, gloo) against one
    process at the same global batch."""
    from studio.cli import main
    from studio.core.recipe import save_recipe

    one = _run(_recipe(tmp_path, tiny_models["llama"], 1, 4))
    assert isinstance(one[-1], Finished), one[-1]
    capsys.readouterr()
    recipe_file = save_recipe(_recipe(tmp_path, tiny_models["llama"], 2, 2), tmp_path / "two.toml")
    assert main(["train", str(recipe_file)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "bundle-2")  # the bundle's path on stdout
    assert "Process 0 is running" in err and "Process 1 is running" in err  # both connected
    assert "Done: 6 steps" in err
    info = read_bundle(tmp_path / "bundle-2")
    a = losses_by_step(one)
    b = losses_by_step(info.metrics)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=LOSS_RTOL), step
    # One StepLogged per step (rank 0 only) in the bundle's history.
    assert [m["step"] for m in info.metrics if m.get("type") == "StepLogged"] == [1, 2, 3, 4, 5, 6]
    # The same adapter, tensor by tensor, as the one-process run.
    import torch

    weights_one, weights_two = _adapter(one[-1].bundle_dir), _adapter(info.path)
    assert weights_one.keys() == weights_two.keys()
    for key in weights_one:
        assert torch.allclose(weights_one[key], weights_two[key], rtol=1e-3, atol=1e-5), key
    assert info.steps == 6 and info.recipe.distributed.num_processes == 2
    # The run library records the run once, from process 0.
    from studio.core.runs import FINISHED, read_status

    status = read_status(tmp_path / "bundle-2")
    assert status["state"] == FINISHED and status["step"] == 6
    measured = info.manifest["measured_peak"]
    assert len(measured["per_process_bytes"]) == 2
    assert measured["bytes"] == max(measured["per_process_bytes"])
    # Plain PEFT loads it, as it loads a one-process bundle.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = json.loads((info.path / "quantization_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(
        tiny_models["llama"],
        quantization_config=BitsAndBytesConfig(**quant),
        dtype=torch.float32,
        device_map={"": "cpu"},
    )
    model = PeftModel.from_pretrained(base, str(info.path))
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            bare = model(input_ids=ids).logits
    assert not torch.allclose(tuned, bare)


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes_with_one(tiny_models, tmp_path):
    """FSDP-QLoRA (4-bit storage in the compute dtype, PEFT's wrap policy) over two processes
    on the CPU, stopped after step 3 and resumed with one process: every step's loss and the
    adapter as one uninterrupted process gives them."""
    import torch

    one = _run(_recipe(tmp_path, tiny_models["llama"], 1, 4))
    fsdp = _recipe(tmp_path, tiny_models["llama"], 2, 2, save_steps=2)
    fsdp = fsdp.with_changes(
        distributed={"strategy": "fsdp"},
        quantization={"fp32_upcast": False},
        training={"gradient_checkpointing": True},  # non-reentrant, as FSDP needs
        output={"dir": str(tmp_path / "fsdp")},
    )
    events = stop_after_step(fsdp, 3)
    assert isinstance(events[-1], Stopped) and events[-1].checkpoint, events[-1]
    single = fsdp.with_changes(distributed={"num_processes": 1}, training={"batch_size": 4})
    resumed = _run(single, resume=True)
    assert isinstance(resumed[-1], Finished), resumed[-1]
    info = read_bundle(resumed[-1].bundle_dir)
    logged = losses_by_step(info.metrics)
    expected = losses_by_step(one)
    assert sorted(logged) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert logged[step] == pytest.approx(expected[step], rel=LOSS_RTOL), step
    weights_one, weights_fsdp = _adapter(one[-1].bundle_dir), _adapter(info.path)
    assert weights_one.keys() == weights_fsdp.keys()
    for key in weights_one:
        assert torch.allclose(weights_one[key], weights_fsdp[key], rtol=1e-3, atol=1e-5), key


def _wait_gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    import psutil

    deadline = time.monotonic() + timeout_s
    alive = pids
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _rank_pids(events) -> list[int]:
    return [
        int(e.message.rsplit("pid ", 1)[1].rstrip(").").strip())
        for e in events
        if isinstance(e, LogMessage) and "is running (pid" in e.message
    ]


@pytest.mark.slow
def test_pause_kill_and_resume_with_one_then_two_processes(tiny_models, tmp_path):
    """Two processes: pause and resume, then a kill after a checkpoint ends every rank.
    Resumed with one process, stopped; resumed again with two, finished: each step once."""
    two = _recipe(tmp_path, tiny_models["llama"], 2, 2, max_steps=10, save_steps=2)
    two = two.with_changes(output={"dir": str(tmp_path / "bundle")})

    first = EngineRunner(two)
    first.start()
    events = collect(first, until=lambda e: isinstance(e, StepLogged) and e.step >= 1)
    first.pause()
    events += collect(first, until=lambda e: isinstance(e, Paused))
    paused_at = events[-1].step
    time.sleep(1.0)
    first.resume()
    events += collect(first, until=lambda e: isinstance(e, CheckpointSaved) and e.step >= 4)
    first.kill()
    events += collect(first)
    first.join()
    assert isinstance(events[-1], Failed) and events[-1].error_type == "EngineKilled"
    resumed = [e for e in events if isinstance(e, Resumed)]
    assert resumed and resumed[0].step == paused_at
    steps = [e.step for e in events if isinstance(e, StepLogged)]
    assert steps == sorted(set(steps)), "a step was repeated or lost around the pause"
    pids = _rank_pids(events)
    assert len(pids) == 2
    assert _wait_gone(pids) == [], "ranks outlived the killed job"
    assert list_checkpoints(checkpoints_dir(two.output.dir))

    one = two.with_changes(distributed={"num_processes": 1}, training={"batch_size": 4})
    second = EngineRunner(one, resume=True)
    second.start()
    events2 = collect(second, until=lambda e: isinstance(e, StepLogged) and e.step >= 6)
    second.stop()
    events2 += collect(second)
    second.join()
    assert isinstance(events2[-1], Stopped) and events2[-1].checkpoint, events2[-1]

    third = _run(two, resume=True)
    assert isinstance(third[-1], Finished), third[-1]
    info = read_bundle(third[-1].bundle_dir)
    logged = [m["step"] for m in info.metrics if m.get("type") == "StepLogged"]
    assert logged == list(range(1, 11))
    assert not checkpoints_dir(two.output.dir).exists()


def test_the_cluster_page_shows_the_command_the_studio_builds(tmp_path):
    """docs/cluster.md's multi-node command is accelerate_command's, flag for flag."""
    import shlex

    from studio.core.recipe import load_recipe

    page = (Path(__file__).resolve().parents[2] / "docs" / "cluster.md").read_text()
    section = page.split("### The exported recipe", 1)[1]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    shown = section.split("```bash\n", 1)[1].split("```", 1)[0]
    (tmp_path / "recipe.toml").write_text(toml)
    recipe = load_recipe(tmp_path / "recipe.toml")
    expected = accelerate_command(
        recipe,
        "/shared/recipes/llama-70b-support.toml",
        on_cpu=False,
        python=".venv/bin/python",
    )
    assert shlex.split(shown.replace("\\\n", " ")) == expected
