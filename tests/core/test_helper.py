"""The helper process: the window's heavy reads run there, with progress, errors and restarts."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from studio.core.helper import Helper, HelperError, preview_dataset, read_model
from studio.core.recipe import DatasetSection


def report_pid_and_modules(names, progress):
    """A task (module level, so it pickles by name): which process ran it, what it imported."""
    progress("looking", 0.5)
    return os.getpid(), [name for name in names if name in sys.modules]


def fail(message, progress):
    raise ValueError(message)


def die(progress):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def helper():
    made = Helper()
    yield made
    made.shutdown()


def test_reads_the_shape_in_another_process_and_relays_progress(helper, tiny_models):
    seen = []
    resolved, shape = helper.call(
        read_model, str(tiny_models["llama"]), progress=lambda m, f: seen.append(m)
    )
    assert shape.num_layers == 2 and resolved.path == tiny_models["llama"]
    assert any("shape" in message for message in seen)
    pid, heavy = helper.call(report_pid_and_modules, ["torch", "transformers"])
    assert pid == helper.pid != os.getpid()
    assert heavy == ["torch", "transformers"], "the helper, not the caller, imported them"


def test_previews_a_dataset_with_the_models_tokenizer(helper, tiny_models, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi!"}\n' * 4)
    section = DatasetSection(path=str(data))
    preview = helper.call(preview_dataset, section, str(tiny_models["llama"]))
    assert preview.format == "alpaca" and preview.stats.examples == 4
    assert preview.examples


def test_a_failure_comes_back_with_its_message_and_the_helper_goes_on(helper):
    with pytest.raises(HelperError, match="no such thing") as failure:
        helper.call(fail, "no such thing")
    assert "ValueError" in failure.value.details
    assert helper.call(report_pid_and_modules, [])[0] == helper.pid


def test_a_helper_that_died_is_reported_and_started_again(helper):
    first = helper.call(report_pid_and_modules, [])[0]
    with pytest.raises(HelperError, match="ended unexpectedly"):
        helper.call(die)
    second = helper.call(report_pid_and_modules, [])[0]
    assert second != first
