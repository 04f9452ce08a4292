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
from conftest import (
    choose,
    click_check_box,
    fill_file_dialog,
    set_spin,
    type_into,
    wait_for_shape,
)
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel

from studio.core.memory import estimate_with_data
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


def menu(window, action: str, path: str) -> None:
    """Choose a File menu item and type ``path`` into the file dialog it opens."""
    fill_file_dialog(path)
    window.findChild(QAction, action).trigger()


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
    recipe = window.session.recipe
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
        "lrPlot",
        "vramPlot",
        "saveBundleButton",
    ):
        assert window.findChild(object, name) is not None, name


def test_the_window_starts_with_the_shipped_recipe(make_window):
    from studio.core.recipe import load_recipe

    shipped = load_recipe(ROOT / "recipes" / "smollm2-sample.toml")
    window = make_window()
    shown = window.session.recipe
    for section in ("model", "quantization", "lora", "dataset", "training"):
        assert getattr(shown, section) == getattr(shipped, section), section
    # ...and its widgets show those values.
    assert window.findChild(object, "maxStepsSpin").value() == shipped.training.max_steps
    assert window.findChild(object, "learningRateSpin").value() == shipped.training.learning_rate
    assert window.findChild(object, "batchSizeSpin").value() == shipped.training.batch_size
    assert window.findChild(object, "maxLengthSpin").value() == shipped.dataset.max_length
    assert window.findChild(QComboBox, "optimizerCombo").currentData() == shipped.training.optimizer
    checkpointing = window.findChild(QCheckBox, "gradCheckpointCheck").isChecked()
    assert checkpointing == shipped.training.gradient_checkpointing


def test_no_gpu_offers_the_cpu_calmly(make_window):
    window = make_window()
    combo = window.findChild(QComboBox, "gpuCombo")
    assert combo.currentData() == "cpu"
    notice = window.findChild(QLabel, "hardwareNoticeLabel")
    assert "CPU" in notice.text()


def test_bf16_disabled_below_compute_capability_8(make_window, monkeypatch, tmp_path):
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
    from studio.core.recipe import Recipe, save_recipe

    path = save_recipe(
        Recipe().with_changes(quantization={"compute_dtype": "bfloat16"}), tmp_path / "r.toml"
    )
    menu(window, "openRecipeAction", str(path))
    assert combo.currentData() == "auto"
    assert window.session.recipe.quantization.compute_dtype == "auto"
    assert "bfloat16" in window.quant.dtype_note.text() and window.quant.dtype_note.isVisibleTo(
        window
    )


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
    session = window.session
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    label = window.findChild(QLabel, "estimateTotalLabel")
    # Once the preview has measured the dataset, the estimate counts its longest example.
    qtbot.waitUntil(lambda: session.data_longest is not None, timeout=120_000)
    longest = session.data_longest[1]

    def estimate_of(recipe):
        return estimate_with_data(
            session.model.shape, recipe, session.device, longest_tokens=longest
        )

    def shown_matches_estimator():
        expected = estimate_of(session.recipe)
        assert session.estimate.total_bytes == expected.total_bytes
        assert label.text().startswith(format_bytes(expected.total_bytes))
        assert f"{expected.total_bytes:,} bytes" in label.toolTip()
        return expected.total_bytes

    double = window.findChild(QCheckBox, "doubleQuantCheck")
    upcast = window.findChild(QCheckBox, "fp32UpcastCheck")

    def click_check(check):
        return lambda: click_check_box(qtbot, window, check)

    def pick(name, data):
        return lambda: choose(qtbot, window, name, data)

    before = shown_matches_estimator()
    toggles = [
        ("double quant off", click_check(double), True),
        ("fp4", pick("quantTypeCombo", "fp4"), False),
        ("upcast off", click_check(upcast), True),
        ("float32 compute", pick("computeDtypeCombo", "float32"), True),
        ("float16 compute", pick("computeDtypeCombo", "float16"), True),
        ("8-bit", pick("quantModeCombo", "8bit"), True),
        ("no quantization", pick("quantModeCombo", "none"), True),
        ("back to 4-bit", pick("quantModeCombo", "4bit"), True),
    ]
    for name, toggle, should_change in toggles:
        recipe_before = session.recipe
        toggle()
        assert session.recipe != recipe_before, name
        after = shown_matches_estimator()
        direct_before = estimate_of(recipe_before).total_bytes
        assert (after != direct_before) == should_change, name
        assert direct_before == before, name
        before = after

    # LoRA, batch and sequence length move it as they are typed, without Enter (a max_length
    # under the data's longest example, which is what counts then).
    set_spin(qtbot, window, "maxLengthSpin", max(16, longest // 4))
    assert session.estimate.sequence_tokens == max(16, longest // 4)
    for name in ("loraRankSpin", "batchSizeSpin", "maxLengthSpin"):
        old = session.estimate.total_bytes
        set_spin(qtbot, window, name, window.findChild(object, name).value() * 2)
        assert shown_matches_estimator() > old, name
    check = window.findChild(QCheckBox, "gradCheckpointCheck")
    old = session.estimate.total_bytes
    click_check_box(qtbot, window, check)
    assert shown_matches_estimator() != old


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
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    off_peak = [t for t in window.session.estimate.terms if t.off_peak_bytes]
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
    set_spin(qtbot, window, "loraRankSpin", 8)
    choose(qtbot, window, "quantTypeCombo", "fp4")
    path = tmp_path / "r.toml"
    menu(window, "saveRecipeAction", str(path))
    assert path.exists()
    window.save_settings()
    again = make_window(restore=True)
    assert again.session.recipe.lora.r == 8
    assert again.session.recipe.quantization.quant_type == "fp4"
    assert again.findChild(object, "loraRankSpin").value() == 8
    third = make_window()
    assert third.session.recipe.lora.r == 16
    menu(third, "openRecipeAction", str(path))
    assert third.findChild(object, "loraRankSpin").value() == 8


def test_a_remembered_cpu_device_does_not_beat_a_gpu_that_is_present(
    make_window, monkeypatch, qtbot
):
    window = make_window()
    assert window.findChild(QComboBox, "gpuCombo").currentData() == "cpu"
    window.save_settings()  # remembered while no GPU was present
    fake_gpu(monkeypatch, (8, 6), total_mib=24576)
    again = make_window(restore=True)
    assert again.findChild(QComboBox, "gpuCombo").currentData() == "cuda:0"
    assert again.session.device.gpu is not None


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
    type_into(qtbot, window, "datasetPathEdit", str(data))
    wait_for_shape(qtbot, window, str(tiny_models[kind]))
    qtbot.waitUntil(lambda: window.session.dataset.preview is not None, timeout=120_000)
    assert window.session.dataset.preview.format == "alpaca"
    assert "c8e6c9" in window.dataset.browser.toHtml().lower()
    assert "12 examples" in window.dataset.stats.text()


def test_simulated_gpu_facts_badge_and_live_strip(make_window, monkeypatch, qtbot):
    fake_gpu(monkeypatch, (7, 5))
    window = make_window()
    assert "7.5" in window.findChild(QLabel, "gpuFactsLabel").text()
    assert window.findChild(QLabel, "bf16Badge").text() == "no bf16"
    assert "simulated" in window.findChild(QLabel, "hardwareNoticeLabel").text().lower()
    live = window.findChild(QLabel, "gpuLiveLabel")
    qtbot.waitUntil(lambda: "memory" in live.text(), timeout=10_000)  # the sampling timer
    choose(qtbot, window, "gpuCombo", "cpu")
    assert window.session.recipe.training.device == "cpu"
    _, auto = dtype_item(window, "auto")
    assert auto.text() == "auto (bfloat16)"  # the CPU allows bf16
    assert not dtype_item(window, "float16")[1].isEnabled()


def test_a_model_that_cannot_be_read_says_why_and_the_next_one_loads(
    make_window, qtbot, tiny_models, tmp_path
):
    # The shape is read in the helper process: its error, and its traceback, reach the window.
    from conftest import use_model

    window = make_window()
    missing = tmp_path / "no-such-model"
    use_model(qtbot, window, str(missing))
    summary = window.findChild(object, "modelSummaryLabel")
    assert str(missing) in window.session.model.message and summary.text().startswith("⚠")
    assert "studio/core/models.py" in summary.toolTip(), "the helper's own traceback"
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    assert window.session.model.shape.num_layers == 2
    assert not summary.text().startswith("⚠")


def test_the_bundle_save_dialog_picks_an_existing_folder_instead_of_opening_it(qtbot, tmp_path):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDialog, QLineEdit

    from studio.ui.flows import FolderSaveDialog

    (tmp_path / "old-adapter").mkdir()
    for name in ("old-adapter", "new-adapter"):
        dialog = FolderSaveDialog(None, "Save", str(tmp_path / "suggested"))
        qtbot.addWidget(dialog)
        dialog.show()
        qtbot.waitExposed(dialog)
        edit = dialog.findChild(QLineEdit, "fileNameEdit")  # Qt's own name for the file field
        edit.selectAll()
        qtbot.keyClicks(edit, name)
        qtbot.keyClick(edit, Qt.Key.Key_Return)
        qtbot.waitUntil(lambda d=dialog: not d.isVisible())
        assert dialog.result() == QDialog.DialogCode.Accepted
        assert dialog.selectedFiles() == [str(tmp_path / name)]


def test_the_learning_rate_and_memory_plots_share_their_row_evenly(make_window, qtbot):
    from PySide6.QtWidgets import QSplitter

    window = make_window()
    splitter = window.findChild(QSplitter, "lowerPlotSplitter")
    qtbot.waitUntil(lambda: splitter.width() > 0)
    left, right = splitter.sizes()
    assert abs(left - right) <= 2, (left, right)
