"""The run library (studio.core.runs) and `qlora-studio runs`: real short runs recorded by the
engine, listed, compared; moved and damaged runs read without errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from runs_library import DIFFERING, short_recipe, train

from studio.core import runs
from studio.core.events import Finished, PhaseChanged, StepLogged, Stopped
from studio.core.phases import Phase
from studio.core.recipe import Recipe, save_recipe

QLORA = [sys.executable, "-m", "studio"]


def _cli(*args, root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QLORA_STUDIO_RUNS_ROOT": str(root)}
    return subprocess.run(
        [*QLORA, *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


# ------------------------------------------------------------------------- no training
def test_recipe_diff_lists_exactly_the_keys_that_differ():
    a = Recipe().with_changes(lora={"r": 8}, output={"dir": "/x/a"}).to_dict()
    b = Recipe().with_changes(lora={"r": 64}, output={"dir": "/x/b"}).to_dict()
    c = (
        Recipe()
        .with_changes(lora={"r": 8}, quantization={"quant_type": "fp4"}, output={"dir": "/x/c"})
        .to_dict()
    )
    assert runs.recipe_diff([a, b, c]) == [
        ("quantization.quant_type", ["nf4", "nf4", "fp4"]),
        ("lora.r", [8, 64, 8]),
    ]
    assert runs.recipe_diff([a, a]) == []
    # A key only one recipe has (an older file) differs, with None where it is absent.
    del b["lora"]["use_dora"]
    assert ("lora.use_dora", [False, None]) in runs.recipe_diff([a, b])


def test_a_moved_run_reads_as_missing_and_damaged_metrics_say_which_line(tmp_path):
    gone = runs.read_run(tmp_path / "never-was")
    assert gone.state == runs.MISSING and "moved or deleted" in gone.message

    # A run stopped with a checkpoint: status file, checkpoints folder with damaged metrics.
    out = tmp_path / "stopped"
    ckpt = runs.checkpoints_path(out)
    (ckpt / "checkpoint-2").mkdir(parents=True)
    good = {
        "type": "StepLogged",
        "step": 1,
        "max_steps": 4,
        "epoch": 0.1,
        "loss": 2.0,
        "learning_rate": 0.01,
        "grad_norm": None,
        "tokens_per_second": 10.0,
        "elapsed_s": 1.0,
        "eta_s": 3.0,
    }
    lines = [
        json.dumps(good),
        '{"type": "StepLogged", "step": 2, "lo',
        json.dumps({**good, "step": 2, "loss": 1.5, "elapsed_s": 2.0}),
    ]
    (ckpt / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    runs.write_status(
        out, {"state": "stopped", "step": 2, "started": 1.0, "recipe_toml": "[lora]\nr = 4\n"}
    )
    summary = runs.read_run(out)
    assert summary.state == "stopped" and summary.resumable
    assert summary.status_text == "stopped, resumable"
    assert summary.steps == 2 and summary.final_loss == 1.5 and summary.rank == 4
    assert summary.problems == [
        f"{ckpt / 'metrics.jsonl'}: line 2 is not valid JSON; it was skipped"
    ]
    curves = runs.run_curves(summary)
    assert [r["step"] for r in curves.steps] == [1, 2]
    assert curves.loss_x("tokens") == [10, 20]

    # Its status says "running" but the process is gone: a failure, never an error.
    runs.write_status(out, {"state": "running", "pid": 2**22 + 12345, "phase": "training"})
    crashed = runs.read_run(out)
    assert crashed.state == "failed" and crashed.resumable
    assert crashed.status_text == "failed in training, resumable"


def _append_many(root: str, worker: int) -> None:
    for i in range(40):
        runs.register(Path(root) / f"run-{worker}-{i}", root=root)


def test_concurrent_runs_never_lose_an_index_line(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    lines = runs.index_path(tmp_path).read_text().splitlines()
    assert len(lines) == 160 and all(json.loads(line)["path"] for line in lines)
    assert len(runs.indexed(tmp_path)) == 160
    runs.forget(tmp_path / "run-0-0", root=tmp_path)
    assert len(runs.indexed(tmp_path)) == 159


def test_the_recorder_writes_the_status_as_events_arrive(tmp_path):
    recipe = Recipe().with_changes(output={"dir": str(tmp_path / "out")})
    sent = []
    recorder = runs.RunRecorder(recipe, resume=False, send=sent.append, root=tmp_path)
    recorder(PhaseChanged(Phase.CHECKING, "checking"))
    assert runs.read_status(tmp_path / "out") is None  # a refused start leaves no trace
    recorder(PhaseChanged(Phase.RESOLVING, "finding"))
    status = runs.read_status(tmp_path / "out")
    assert status["state"] == "running" and status["phase"] == "resolving"
    assert runs.indexed(tmp_path) == [tmp_path / "out"]
    recorder(StepLogged(1, 4, 0.1, 2.5, 0.01, None, 5.0, 1.0, 3.0))
    recorder(Stopped(step=1, checkpoint=str(tmp_path / "out.checkpoints" / "checkpoint-1")))
    status = runs.read_status(tmp_path / "out")
    assert status["state"] == "stopped" and status["step"] == 1 and status["final_loss"] == 2.5
    assert len(sent) == 4  # every event went on to the parent
    samples, problems = runs.read_jsonl(tmp_path / "out.checkpoints" / runs.MEMORY)
    assert samples and not problems and samples[0]["rss_bytes"] > 0


# ---------------------------------------------------------------------------- training
@pytest.mark.slow
def test_three_real_runs_listed_and_compared(tmp_path, tiny_models, isolated_runs_root):
    root = isolated_runs_root
    model = tiny_models["llama"]
    # One run from the command line, two from the engine directly (as the window starts them).
    recipe_file = save_recipe(short_recipe(tmp_path, model, "rank8"), tmp_path / "rank8.toml")
    done = _cli("train", str(recipe_file), root=root)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("rank16", "fp4-short"):
        events = train(short_recipe(tmp_path, model, name))
        assert isinstance(events[-1], Finished), events[-1]

    listed = json.loads(_cli("runs", "--json", root=root).stdout)["runs"]
    by_name = {r["name"]: r for r in listed}
    assert set(by_name) == {"rank8", "rank16", "fp4-short"}
    for run in listed:
        assert run["status"] == "finished" and run["bundle"]
        assert run["steps"] == 3 and run["final_loss"] > 0 and run["final_eval_loss"] > 0
        assert run["estimate_bytes"] > 0 and run["peak_bytes"] > 0 and run["duration_s"] > 0
    assert by_name["rank8"]["rank"] == 8 and by_name["fp4-short"]["quantization"] == "FP4 +DQ"

    # The bundle keeps the memory samples (listed in its manifest, so verified with it).
    bundle = tmp_path / "rank16"
    assert "memory.jsonl" in json.loads((bundle / "manifest.json").read_text())["files"]
    samples, _ = runs.read_jsonl(bundle / "memory.jsonl")
    # every phase is sampled on entry, however short (this run trains for a fraction of a second)
    assert {"loading", "training", "saving"} <= {s["phase"] for s in samples}

    png = tmp_path / "compare.png"
    compared = _cli(
        "runs",
        "compare",
        "rank8",
        "rank16",
        str(tmp_path / "fp4-short"),
        "--json",
        "--png",
        str(png),
        root=root,
    )
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert [d["key"] for d in result["differences"]] == DIFFERING
    assert result["differences"][1]["values"] == [8, 16, 16]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss, memory = runs.compare_charts([runs.find_run(n, root) for n in ("rank8", "rank16")])
    assert [s.label for s in loss.series] == [
        "rank8 train",
        "rank8 eval",
        "rank16 train",
        "rank16 eval",
    ]
    assert [s.label for s in memory.series] == ["rank8", "rank8 est.", "rank16", "rank16 est."]

    text = _cli("runs", "compare", "rank8", "rank16", root=root).stdout
    assert "lora.r" in text and "quant_type" not in text and "Final figures" in text

    # Moved away: missing, never an error; a damaged metrics line is named.
    shutil.move(str(tmp_path / "rank16"), str(tmp_path / "elsewhere"))
    metrics = tmp_path / "fp4-short" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + "{not json\n")
    listed = json.loads(_cli("runs", "--json", root=root).stdout)["runs"]
    by_name = {r["name"]: r for r in listed}
    assert by_name["rank16"]["status"] == "missing"
    assert by_name["fp4-short"]["status"] == "finished" and by_name["fp4-short"]["steps"] == 3
    assert "line" in by_name["fp4-short"]["problems"][0]
    assert _cli("runs", root=root).returncode == 0
    missing = _cli("runs", "compare", "rank8", "nothing-such", root=root)
    assert missing.returncode == 2 and "nothing-such" in missing.stderr


def test_a_multi_process_run_is_recorded_without_sampling_the_launcher(tmp_path):
    recipe = Recipe().with_changes(output={"dir": str(tmp_path / "ddp")})
    recorder = runs.RunRecorder(
        recipe, resume=False, send=lambda event: None, root=tmp_path, sample_memory=False
    )
    recorder(PhaseChanged(Phase.LOADING, "loading"))
    recorder(Finished(str(tmp_path / "ddp"), 4, 123, 100, 1.25))
    status = runs.read_status(tmp_path / "ddp")
    assert status["state"] == "finished" and status["peak_bytes"] == 123
    assert not (tmp_path / "ddp.checkpoints" / runs.MEMORY).exists()
