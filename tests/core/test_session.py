"""The session model on its own (no Qt): one owner for each piece of state, a change event
only when a value changes, derived state recomputed in one place, the job's vocabulary."""

from __future__ import annotations

import pytest

from studio.core.engine.errors import OutputExistsError
from studio.core.engine.output import check_start, inspect_output
from studio.core.events import Failed, Finished, Paused, PhaseChanged, Resumed, StepLogged, Stopped
from studio.core.gpu import GpuDiscovery, GpuInfo
from studio.core.models import read_shape, resolve_model
from studio.core.phases import ENGINE_PHASES, JobState, Phase, phase_label, phase_line
from studio.core.recipe import Recipe, RecipeError
from studio.core.session import LoadState, Session, inactive_fields


def gpu(total_gib: float, cc=(8, 6)) -> GpuDiscovery:
    total = int(total_gib * 2**30)
    info = GpuInfo(
        index=0,
        name="Test GPU",
        total_bytes=total,
        free_bytes=total,
        used_bytes=0,
        compute_capability=cc,
        driver_version=None,
        simulated=True,
    )
    return GpuDiscovery(gpus=(info,), reason=None, source="fake")


@pytest.fixture
def shape_of(tiny_models):
    def read(kind="llama"):
        resolved = resolve_model(str(tiny_models[kind]))
        return resolved, read_shape(resolved)

    return read


def test_an_edit_emits_once_and_only_on_a_change():
    session = Session.create(discovery=GpuDiscovery(gpus=(), reason="none", source="none"))
    seen = []
    session.events.recipe.connect(lambda new, old: seen.append((old.lora.r, new.lora.r)))
    session.edit("lora.r", 8)
    session.edit("lora.r", 8)
    assert seen == [(16, 8)]
    with pytest.raises(RecipeError, match="lora.r"):
        session.edit("lora.r", 0)
    assert session.recipe.lora.r == 8, "a refused edit leaves the recipe as it was"


def test_the_estimate_follows_the_model_the_recipe_and_the_device(shape_of):
    session = Session.create(discovery=gpu(24))
    assert session.device.gpu is not None and session.estimate is None
    assert "shape" in session.estimate_message
    resolved, shape = shape_of()
    source = str(resolved.path)
    session.edit("model.source", source)
    assert session.model.state is LoadState.EMPTY
    session.model_reading(source, "Reading…")
    session.model_ready(source, resolved, shape)
    first = session.estimate.total_bytes
    session.edit("training.batch_size", 8)
    assert session.estimate.total_bytes > first
    session.edit("training.device", "cpu")
    assert session.device.gpu is None and session.estimate.device == "CPU"
    # A result for a source that is no longer current is dropped.
    session.edit("model.source", "builtin:smollm2-135m-instruct")
    session.model_ready(source, resolved, shape)
    assert session.model.state is LoadState.EMPTY and session.estimate is None


def test_a_model_that_cannot_be_read_blocks_start_and_says_why():
    session = Session.create(discovery=GpuDiscovery(gpus=(), reason="none", source="none"))
    source = session.recipe.model.source
    session.model_failed(source, "no such folder /x")
    assert session.estimate is None and "no such folder" in session.estimate_message
    assert any("no such folder" in reason for reason in session.start_blockers())


def test_a_dataset_error_blocks_start_until_the_dataset_changes(shape_of):
    session = Session.create(discovery=GpuDiscovery(gpus=(), reason="none", source="none"))
    resolved, shape = shape_of()
    session.edit("model.source", str(resolved.path))
    session.model_ready(str(resolved.path), resolved, shape)
    assert session.start_blockers() == ("Checking the dataset…",), "unchecked data blocks"
    key = session.dataset_key()
    session.dataset_ready(key, preview=object())
    assert session.start_blockers() == ()
    session.dataset_failed(key, "data.jsonl line 3: not JSON")
    assert any("line 3" in reason for reason in session.start_blockers())
    session.edit("dataset.max_length", 128)
    assert session.dataset.state is LoadState.EMPTY
    assert session.start_blockers() == ("Checking the dataset…",)


def test_the_advice_applies_as_recipe_changes(shape_of):
    session = Session.create(discovery=gpu(1.0))
    resolved, shape = shape_of()
    session.edit_many(
        {
            "model": {"source": str(resolved.path)},
            "training": {"batch_size": 16},
            "dataset": {"max_length": 2048},
        }
    )
    session.model_ready(str(resolved.path), resolved, shape)
    assert session.estimate.verdict == "does_not_fit" and session.estimate.advice_changes
    assert session.apply_advice()
    assert session.estimate.verdict != "does_not_fit"


def test_settings_without_effect():
    assert "quantization.fp32_upcast" in inactive_fields(
        Recipe().with_changes(quantization={"mode": "none"})
    )
    eight = inactive_fields(Recipe().with_changes(quantization={"mode": "8bit"}))
    assert "quantization.quant_type" in eight and "quantization.fp32_upcast" not in eight
    assert "training.epochs" in inactive_fields(Recipe())
    assert "training.epochs" not in inactive_fields(
        Recipe().with_changes(training={"max_steps": -1})
    )


def test_the_job_state_follows_requests_and_events():
    session = Session.create(discovery=GpuDiscovery(gpus=(), reason="none", source="none"))
    states = []
    session.events.job.connect(states.append)
    session.job_started(resumed=False)
    session.apply_event(PhaseChanged(Phase.LOADING, "loading", None))
    assert session.run.phase is Phase.LOADING and session.run.progress is None
    step = StepLogged(2, 4, 0.5, 1.0, 1e-3, 0.3, 100.0, 2.0, 2.0)
    session.apply_event(step)
    assert session.run.progress == 0.5 and session.run.last_step is step
    session.job_pausing()
    session.apply_event(Paused(2))
    session.job_resuming()
    session.apply_event(Resumed(2))
    session.job_stopping()
    session.apply_event(Paused(3))  # a late pause must not undo the stop
    assert session.job is JobState.STOPPING
    session.apply_event(Stopped(3, "/x/checkpoint-3"))
    assert states == [
        JobState.RUNNING,
        JobState.PAUSING,
        JobState.PAUSED,
        JobState.RUNNING,
        JobState.STOPPING,
        JobState.IDLE,
    ]
    session.job_started(resumed=True)
    session.apply_event(Finished("/x", 4, 123, 456, 0.5))
    assert session.bundle == "/x" and session.measured_peak == 123 and session.run.progress == 1
    session.job_started(resumed=False)
    assert session.bundle is None and session.measured_peak is None
    session.apply_event(Failed(Phase.TOKENIZING, "DatasetError", "bad line"))
    assert session.job is JobState.IDLE and isinstance(session.run.outcome, Failed)


def test_phases_have_one_vocabulary():
    assert Phase("loading") is Phase.LOADING and Phase.LOADING == "loading"
    assert phase_label("applying_lora") == "Adding LoRA adapters"
    assert phase_label("something_new") == "Something new"
    assert Phase.CHECKING.number == 1 and Phase.STARTING.number is None
    n = len(ENGINE_PHASES)
    assert phase_line(Phase.SAVING, "writing") == f"Saving the bundle ({n}/{n}) — writing"


def test_the_start_rule_for_an_output_folder(tmp_path):
    out = tmp_path / "run"
    fresh = inspect_output(out)
    check_start(fresh, resume=False, overwrite=False)
    out.mkdir()
    state = inspect_output(out)
    assert state.bundle_exists and not state.resumable
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_start(state, resume=False, overwrite=False)
    with pytest.raises(OutputExistsError, match="resuming writes the bundle there too"):
        check_start(state, resume=True, overwrite=False)
    check_start(state, resume=True, overwrite=True)


def test_the_estimate_counts_the_datasets_longest_example(shape_of, tmp_path):
    """Batches are padded to their longest example: once the dataset has been read, the
    estimate counts its longest example instead of max_length (when that is shorter)."""
    import json

    from transformers import AutoTokenizer

    from studio.core.data import preview_dataset
    from studio.core.memory import estimate

    def write(name: str, words: int):
        path = tmp_path / name
        rows = [
            {"instruction": f"Say {i}.", "output": " ".join(["word"] * words)} for i in range(8)
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)

    short = write("short.jsonl", 4)
    session = Session.create(discovery=gpu(24.0))
    resolved, shape = shape_of()
    session.edit_many(
        {"model": {"source": str(resolved.path)}, "dataset": {"path": short, "max_length": 512}}
    )
    session.model_ready(str(resolved.path), resolved, shape)
    full = session.estimate
    assert (full.sequence_tokens, full.sequence_from_data) == (512, False)

    tokenizer = AutoTokenizer.from_pretrained(str(resolved.path))
    preview = preview_dataset(session.recipe.dataset, tokenizer)
    session.dataset_ready(session.dataset_key(), preview)
    longest = preview.stats.max_tokens
    est = session.estimate
    assert est.sequence_from_data and est.sequence_tokens == longest < 512
    as_if = session.recipe.with_changes(dataset={"max_length": longest})
    assert est.total_bytes == estimate(shape, as_if, session.device).total_bytes < full.total_bytes

    # Editing max_length keeps counting the data's longest example while the preview is re-read,
    # and a max_length under it is what counts.
    session.edit("dataset.max_length", 256)
    assert session.estimate.sequence_tokens == longest
    session.edit("dataset.max_length", longest - 1)
    assert (session.estimate.sequence_tokens, session.estimate.sequence_from_data) == (
        longest - 1,
        False,
    )
    # Another file: max_length again, until that file has been read.
    session.edit_many({"dataset": {"path": write("long.jsonl", 300), "max_length": 512}})
    assert (session.estimate.sequence_tokens, session.estimate.sequence_from_data) == (512, False)
