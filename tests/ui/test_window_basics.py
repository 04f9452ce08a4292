"""The window builds without torch, follows the bf16 rule, and estimates every toggle the way
`studio.core.memory.estimate` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for_shape
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel

from studio.core.memory import estimate
from studio.core.units import format_bytes

ROOT = Path(__file__).resolve().parents[2]


def fake_gpu(monkeypatch, cc, total_mib=11264):
    monkeypatch.setenv(
        "QLORA_STUDIO_FAKE_GPUS",
        json.dumps(
            [
                {
                    "name": f"Test GPU cc{cc[0]}{cc[1]}",
                    "total_mib": total_mib,
                    "free_mib": total_mib - 300,
                    "compute_capability": list(cc),
                }
            ]
        ),
    )


def dtype_item(window, key):
    combo = window.findChild(QComboBox, "computeDtypeCombo")
    row = combo.findData(key)
    return combo, combo.model().item(row)


def test_window_paints_before_torch_is_imported(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from studio.app import build_main_window
        from PySide6.QtWidgets import QApplication
        window = build_main_window(restore=False, autoload=False)
        window.show()
        for _ in range(20):
            QApplication.processEvents()
        image = window.grab()
        assert not image.isNull() and image.width() > 0
        names = [m for m in ("torch", "transformers", "peft", "bitsandbytes", "datasets")
                 if m in sys.modules]
        print("HEAVY:", names)
        window.close()
        """
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QLORA_STUDIO_SETTINGS_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY: []" in result.stdout, result.stdout + result.stderr


def test_builtin_model_and_sample_dataset_are_preselected(make_window):
    window = make_window()
    recipe = window.recipe()
    assert recipe.model.source == "builtin:smollm2-135m-instruct"
    assert recipe.dataset.path == "builtin:sample"
    for name in (
        "gpuCombo",
        "modelSourceEdit",
        "quantModeCombo",
        "quantTypeCombo",
        "computeDtypeCombo",
        "doubleQuantCheck",
        "estimateTotalLabel",
        "estimateBar",
        "startButton",
        "pauseButton",
        "stopButton",
        "lossPlot",
        "vramPlot",
        "saveBundleButton",
    ):
        assert window.findChild(object, name) is not None, name


def test_no_gpu_offers_the_cpu_calmly(make_window):
    window = make_window()
    combo = window.findChild(QComboBox, "gpuCombo")
    assert combo.currentData() == "cpu"
    notice = window.findChild(QLabel, "hardwareNoticeLabel")
    assert "CPU" in notice.text()


def test_bf16_disabled_below_compute_capability_8(make_window, monkeypatch):
    fake_gpu(monkeypatch, (7, 5))
    window = make_window()
    assert window.findChild(QComboBox, "gpuCombo").currentData() == "cuda:0"
    combo, bf16 = dtype_item(window, "bfloat16")
    assert not bf16.isEnabled()
    assert "compute capability" in bf16.toolTip() and "7.5" in bf16.toolTip()
    _, auto = dtype_item(window, "auto")
    assert auto.text() == "auto (float16)"
    assert dtype_item(window, "float16")[1].isEnabled()
    # A recipe asking for bf16 on this GPU falls back to auto and says why.
    window.quant.set_section(window.quant.section().__class__(compute_dtype="bfloat16"))
    assert combo.currentData() == "auto"
    assert "bfloat16" in window.quant.dtype_note.text()


def test_bf16_enabled_on_compute_capability_8_6(make_window, monkeypatch):
    fake_gpu(monkeypatch, (8, 6), total_mib=24576)
    window = make_window()
    _, bf16 = dtype_item(window, "bfloat16")
    assert bf16.isEnabled()
    _, auto = dtype_item(window, "auto")
    assert auto.text() == "auto (bfloat16)"


def test_every_quantization_toggle_moves_the_estimate_like_the_estimator(
    make_window, monkeypatch, qtbot, tiny_models
):
    fake_gpu(monkeypatch, (8, 6), total_mib=24576)
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    label = window.findChild(QLabel, "estimateTotalLabel")

    def shown_matches_estimator():
        expected = estimate(window.shape, window.recipe(), window.device)
        assert window.estimate.total_bytes == expected.total_bytes
        assert label.text().startswith(format_bytes(expected.total_bytes))
        assert f"{expected.total_bytes:,} bytes" in label.toolTip()
        return expected.total_bytes

    mode = window.findChild(QComboBox, "quantModeCombo")
    qtype = window.findChild(QComboBox, "quantTypeCombo")
    dtype = window.findChild(QComboBox, "computeDtypeCombo")
    double = window.findChild(QCheckBox, "doubleQuantCheck")
    upcast = window.findChild(QCheckBox, "fp32UpcastCheck")

    before = shown_matches_estimator()
    toggles = [
        ("double quant off", lambda: double.setChecked(False), True),
        ("fp4", lambda: qtype.setCurrentIndex(qtype.findData("fp4")), False),
        ("upcast off", lambda: upcast.setChecked(False), True),
        ("float32 compute", lambda: dtype.setCurrentIndex(dtype.findData("float32")), True),
        ("float16 compute", lambda: dtype.setCurrentIndex(dtype.findData("float16")), True),
        ("8-bit", lambda: mode.setCurrentIndex(mode.findData("8bit")), True),
        ("no quantization", lambda: mode.setCurrentIndex(mode.findData("none")), True),
        ("back to 4-bit", lambda: mode.setCurrentIndex(mode.findData("4bit")), True),
    ]
    for name, toggle, should_change in toggles:
        expected_recipe_before = window.recipe()
        toggle()
        after = shown_matches_estimator()
        direct_before = estimate(window.shape, expected_recipe_before, window.device).total_bytes
        assert (after != direct_before) == should_change, name
        assert direct_before == before, name
        before = after

    # LoRA, batch, sequence length and checkpointing move it too.
    for name in ("loraRankSpin", "batchSizeSpin", "maxLengthSpin"):
        spin = window.findChild(object, name)
        old = window.estimate.total_bytes
        spin.setValue(spin.value() * 2)
        assert shown_matches_estimator() > old, name
    check = window.findChild(QCheckBox, "gradCheckpointCheck")
    old = window.estimate.total_bytes
    check.setChecked(not check.isChecked())
    assert shown_matches_estimator() != old
    optimizer = window.findChild(QComboBox, "optimizerCombo")
    optimizer.setCurrentIndex(optimizer.findData("adamw_torch"))
    shown_matches_estimator()


def test_estimate_bar_tooltip_names_a_term(make_window, qtbot, tiny_models):
    window = make_window()
    window.resize(1400, 900)
    wait_for_shape(qtbot, window, str(tiny_models["qwen2"]))
    bar = window.findChild(object, "estimateBar")
    bar.grab()  # paints it
    assert bar._segments, "the bar paints one segment per term"
    rect, term = bar._segments[0]
    assert bar.term_at(rect.center().x(), rect.center().y()) is term


def test_terms_not_at_the_peak_are_listed_apart(make_window, qtbot, tiny_models):
    from PySide6.QtWidgets import QLabel

    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    off_peak = [t for t in window.estimate.terms if t.off_peak_bytes]
    assert off_peak, "one side of the step's two peaks is always left out"
    label = window.findChild(QLabel, "estimateOffPeak")
    assert label is not None
    for term in off_peak:
        assert term.label in label.text()
    bar = window.findChild(object, "estimateBar")
    bar.grab()
    assert all(term.bytes > 0 for _, term in bar._segments)


def test_recipe_round_trip_and_settings_remembered(make_window, tmp_path, qtbot):
    window = make_window()
    window.findChild(object, "loraRankSpin").setValue(8)
    window.findChild(QComboBox, "quantTypeCombo").setCurrentIndex(1)
    path = window.save_recipe_as(str(tmp_path / "r.toml"))
    assert path.exists()
    window.save_settings()
    again = make_window(restore=True)
    assert again.recipe().lora.r == 8
    assert again.recipe().quantization.quant_type == "fp4"
    third = make_window()
    assert third.recipe().lora.r == 16
    assert third.open_recipe(str(path))
    assert third.recipe().lora.r == 8


@pytest.mark.parametrize("kind", ["gpt2"])
def test_dataset_preview_highlights_trained_parts(make_window, qtbot, tiny_models, kind, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"Say {i}", "input": "", "output": f"Number {i}."}) + "\n"
            for i in range(12)
        )
    )
    window = make_window()
    window.findChild(object, "datasetPathEdit").setText(str(data))
    window.dataset._edited()
    wait_for_shape(qtbot, window, str(tiny_models[kind]))
    qtbot.waitUntil(lambda: window.dataset.preview is not None, timeout=120_000)
    assert window.dataset.preview.format == "alpaca"
    assert "c8e6c9" in window.dataset.browser.toHtml().lower()
    assert "12 examples" in window.dataset.stats.text() or "examples" in window.dataset.stats.text()
    assert Qt  # imported for flags in other tests


def test_simulated_gpu_facts_badge_and_live_strip(make_window, monkeypatch):
    fake_gpu(monkeypatch, (7, 5))
    window = make_window()
    assert "7.5" in window.findChild(QLabel, "gpuFactsLabel").text()
    assert window.findChild(QLabel, "bf16Badge").text() == "no bf16"
    assert "simulated" in window.findChild(QLabel, "hardwareNoticeLabel").text().lower()
    window._sample()
    assert "memory" in window.findChild(QLabel, "gpuLiveLabel").text()
    combo = window.findChild(QComboBox, "gpuCombo")
    combo.setCurrentIndex(combo.findData("cpu"))
    _, auto = dtype_item(window, "auto")
    assert auto.text() == "auto (bfloat16)"  # the CPU allows bf16
    assert not dtype_item(window, "float16")[1].isEnabled()


def test_a_model_that_cannot_be_read_says_why_and_the_next_one_loads(
    make_window, qtbot, tiny_models, tmp_path
):
    # The shape is read in the helper process: its error, and its traceback, reach the window.
    window = make_window()
    failures = []
    window.model_panel.modelFailed.connect(failures.append)
    missing = tmp_path / "no-such-model"
    window.model_panel.set_source(str(missing))
    qtbot.waitUntil(lambda: bool(failures), timeout=120_000)
    summary = window.findChild(object, "modelSummaryLabel")
    assert str(missing) in failures[0] and summary.text().startswith("⚠")
    assert "studio/core/models.py" in summary.toolTip(), "the helper's own traceback"
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    assert window.shape.num_layers == 2
