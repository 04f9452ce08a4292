"""Engine pieces that need no engine process: failure messages, checkpoints, plots, control."""

from __future__ import annotations

import multiprocessing
import struct
import threading
import time
import zlib

import pytest

from studio.core.engine.checkpoints import (
    CHECKPOINT_MANIFEST,
    checkpoints_dir,
    last_checkpoint,
    list_checkpoints,
    scan_checkpoints,
    write_manifest,
)
from studio.core.engine.control import ControlChannel
from studio.core.engine.errors import (
    CheckpointError,
    failure_from_exception,
    is_bad_input,
    oom_message,
)
from studio.core.events import Failed
from studio.core.memory import MemoryEstimate, Term
from studio.core.plots import Series, line_chart_png, nice_ticks


def _estimate() -> MemoryEstimate:
    gib = 2**30
    terms = (
        Term("logits", "Logits and loss", 5 * gib, "activations", ""),
        Term("quantized_linears", "4-bit linears", 3 * gib, "weights", ""),
        Term("optimizer", "Optimizer state", gib // 4, "training", ""),
        Term("cuda_context", "CUDA context", gib // 2, "fixed", ""),
    )
    return MemoryEstimate(
        terms=terms,
        total_bytes=sum(t.bytes for t in terms),
        weights_bytes=3 * gib,
        device="GPU 0: RTX",
        capacity_bytes=8 * gib,
        fits=False,
        verdict="does_not_fit",
        advice="set training.batch_size = 1",
    )


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError, which only CUDA raises (no GPU here)."""


def test_oom_names_phase_largest_terms_and_what_to_change():
    failed = failure_from_exception(
        OutOfMemoryError("CUDA out of memory"), "training", estimate=_estimate()
    )
    assert failed.error_type == "OutOfMemoryError" and failed.phase == "training"
    text = failed.message
    assert "while training" in text
    assert text.index("Logits and loss") < text.index("4-bit linears")
    assert "batch_size" in text and "max_length" in text  # how to shrink activations
    assert "set training.batch_size = 1" in text  # the estimator's own advice
    assert "Traceback" in failed.details or "OutOfMemoryError" in failed.details
    assert not is_bad_input(failed)


def test_oom_without_estimate_still_says_what_to_do():
    text = oom_message("loading", None)
    assert "loading" in text and "batch_size" in text


def test_bad_input_keeps_its_type_and_message():
    from studio.core.data import DatasetError
    from studio.core.recipe import RecipeError

    for exc in (
        RecipeError("training.batch_size", "0 is too small"),
        DatasetError("data.jsonl", "is not valid JSON", line=3),
        CheckpointError("pass --resume"),
    ):
        failed = failure_from_exception(exc, "tokenizing")
        assert failed.error_type == type(exc).__name__ and is_bad_input(failed)
        assert str(exc) in failed.message


def test_unexpected_error_says_where_and_keeps_traceback():
    try:
        raise KeyError("lm_head")
    except KeyError as exc:
        failed = failure_from_exception(exc, "applying_lora")
    assert isinstance(failed, Failed) and failed.error_type == "KeyError"
    assert "adding the LoRA adapter" in failed.message and "lm_head" in failed.message
    assert "Traceback" in failed.details


def test_only_complete_checkpoints_count(tmp_path):
    out = tmp_path / "run"
    folder = checkpoints_dir(out)
    assert folder.name == "run.checkpoints"
    for step, complete in ((4, True), (8, True), (12, False)):
        path = folder / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "adapter_model.safetensors").write_bytes(b"weights" * 100)
        (path / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        if complete:
            write_manifest(path)  # what the engine's on_save callback writes, last
    (folder / "metrics.jsonl").write_text("")
    assert [s for s, _ in list_checkpoints(folder)] == [4, 8]
    assert last_checkpoint(folder).name == "checkpoint-8"  # a save cut short is skipped
    assert last_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:10]), "is 10 bytes, but 700 were saved"),
        (lambda p: p.write_bytes(b"x" * 700), "has changed since it was saved"),
        (lambda p: p.unlink(), "is missing"),
    ],
)
def test_a_damaged_checkpoint_is_refused_with_the_reason(tmp_path, damage, why):
    folder = tmp_path / "run.checkpoints"
    for step in (2, 4):
        path = folder / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "adapter_model.safetensors").write_bytes(b"weights" * 100)
        write_manifest(path)
    damage(folder / "checkpoint-4" / "adapter_model.safetensors")
    assert [s for s, _ in list_checkpoints(folder)] == [2]
    reason = dict((s, w) for s, _, w in scan_checkpoints(folder))[4]
    assert reason.startswith("adapter_model.safetensors") and why in reason
    (folder / "checkpoint-2" / CHECKPOINT_MANIFEST).write_text("{not json")
    assert list_checkpoints(folder) == []


def test_control_channel_pause_hold_and_stop():
    channel = ControlChannel(multiprocessing.get_context("spawn"))
    assert not channel.pause_requested and not channel.stop_requested
    channel.request_pause()
    assert channel.pause_requested
    released = threading.Event()

    def hold():
        channel.hold_while_paused(poll_s=0.05)
        released.set()

    threading.Thread(target=hold, daemon=True).start()
    time.sleep(0.3)
    assert not released.is_set()  # really holds
    channel.request_stop()  # a stop ends a pause
    assert released.wait(10)
    assert channel.stop_requested and not channel.pause_requested


def _decode_png(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw


def test_line_chart_is_a_valid_png_with_the_lines_drawn():
    png = line_chart_png(
        [
            Series("train loss", [1, 2, 3, 4], [3.0, 2.0, 1.5, 1.2]),
            Series("eval loss", [2, 4], [2.5, 1.6]),
        ],
        title="Loss",
        x_label="step",
        y_label="loss",
        width=320,
        height=200,
    )
    width, height, raw = _decode_png(png)
    assert (width, height) == (320, 200)
    blue = bytes((0, 114, 178))
    orange = bytes((213, 94, 0))
    assert raw.count(blue) > 50 and raw.count(orange) > 50  # both series visible
    empty = line_chart_png([], title="GPU memory", note="trained on the CPU")
    assert _decode_png(empty)[:2] == (640, 400)


def test_nice_ticks_are_round_and_cover_the_range():
    ticks = nice_ticks(0.37, 4.2)
    assert ticks[0] >= 0.37 and ticks[-1] <= 4.2 + 1e-9 and len(ticks) >= 3
    assert all(abs(t * 2 - round(t * 2)) < 1e-9 for t in ticks)


def test_fp32_upcast_is_a_choice(tiny_models):
    """With the upcast the non-quantized weights become float32; without it they keep the
    compute dtype. Either way every base weight is frozen."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from studio.core.engine.building import prepare_for_training

    def load():
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        return AutoModelForCausalLM.from_pretrained(
            tiny_models["llama"],
            quantization_config=config,
            dtype=torch.bfloat16,
            device_map={"": "cpu"},
        )

    for upcast, dtype in ((True, torch.float32), (False, torch.bfloat16)):
        model = prepare_for_training(
            load(), quantized=True, upcast=upcast, gradient_checkpointing=True
        )
        assert model.model.embed_tokens.weight.dtype == dtype
        assert model.model.norm.weight.dtype == dtype
        assert not any(p.requires_grad for p in model.parameters())
        assert model.is_gradient_checkpointing


def test_write_failures_name_the_cause_and_the_folder(tmp_path):
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x.pt"))
    failed = failure_from_exception(full, "training", folders=[tmp_path], kept="checkpoint-4")
    assert failed.error_type == "DiskWriteError"
    assert f"Writing to {tmp_path / 'run'} failed" in failed.message
    assert (
        "the disk is full (ENOSPC)" in failed.message and "checkpoint-4 is kept" in failed.message
    )
    # safetensors' Rust writer hides the errno in its text.
    rust = RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left" })')
    assert "ENOSPC" in failure_from_exception(rust, "saving", folders=[tmp_path]).message
    denied = PermissionError(errno.EACCES, "Permission denied", "/models/m/model.safetensors")
    message = failure_from_exception(denied, "loading", folders=[tmp_path]).message
    assert message.startswith("Access to /models/m/model.safetensors was denied")
    assert "(EACCES)" in message
    other = RuntimeError("shapes do not match")
    assert failure_from_exception(other, "training").error_type == "RuntimeError"


def test_the_quick_checkpoint_check_reads_sizes_not_contents(tmp_path):
    """Front ends ask their questions from manifests and sizes; only the engine hashes."""
    from studio.core.engine.checkpoints import verify_checkpoint, write_manifest
    from studio.core.engine.output import inspect_output

    output = tmp_path / "run"
    checkpoint = tmp_path / "run.checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.pt").write_bytes(b"x" * 4096)
    (checkpoint / "trainer_state.json").write_text("{}")
    write_manifest(checkpoint, 4)
    assert inspect_output(output, hashes=False).latest_checkpoint == (4, checkpoint)

    (checkpoint / "optimizer.pt").write_bytes(b"y" * 4096)  # same size, other contents
    assert verify_checkpoint(checkpoint, hashes=False) is None
    assert "sha256 differs" in verify_checkpoint(checkpoint)
    assert inspect_output(output).latest_checkpoint is None, "the engine's check refuses it"

    (checkpoint / "optimizer.pt").write_bytes(b"y" * 100)  # cut short
    assert "100 bytes" in verify_checkpoint(checkpoint, hashes=False)
    assert inspect_output(output, hashes=False).latest_checkpoint is None
