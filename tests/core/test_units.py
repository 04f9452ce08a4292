"""studio.core.units: the one formatter of bytes, durations and counts."""

from __future__ import annotations

import pytest

from studio.core.units import UNKNOWN, format_bytes, format_count, format_duration

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1018, "1018 B"),
        (KIB, "1.00 KiB"),
        (3.5 * KIB, "3.50 KiB"),
        (512 * MIB, "512.00 MiB"),
        (470 * MIB, "470.00 MiB"),
        (1023 * MIB, "1023.00 MiB"),
        (GIB - 1, "1.00 GiB"),  # never "1024.00 MiB"
        (int(1.27 * GIB), "1.27 GiB"),
        (111_692_152, "106.52 MiB"),
        (80 * GIB, "80.00 GiB"),
        (2 * TIB, "2.00 TiB"),
        (-1.5 * GIB, "-1.50 GiB"),
        (None, "—"),
        (float("nan"), "—"),
    ],
)
def test_format_bytes(value, text):
    assert format_bytes(value) == text


def test_two_decimals_in_every_binary_unit():
    for size in (KIB, MIB, GIB, TIB):
        number, unit = format_bytes(7 * size + size // 3).split()
        assert unit.endswith("iB") and len(number.partition(".")[2]) == 2


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.4, "0 s"),
        (42, "42 s"),
        (59.6, "1 min 00 s"),
        (185, "3 min 05 s"),
        (3600, "1 h 00 min"),
        (3725, "1 h 02 min"),
        (26 * 3600 + 59, "26 h 00 min"),
        (None, "—"),
        (-1, "—"),
        (float("nan"), "—"),
        (float("inf"), "—"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1.0 k"),
        (12_345, "12.3 k"),
        (999_960, "1.0 M"),  # never "1000.0 k"
        (134_515_008, "134.5 M"),
        (7e9, "7.0 B"),
        (None, "—"),
    ],
)
def test_format_count(value, text):
    assert format_count(value) == text


def test_unknown_is_one_em_dash():
    assert UNKNOWN == "—"
    assert format_bytes(None) == format_duration(None) == format_count(None) == UNKNOWN


def test_the_cli_table_and_the_window_share_the_formatter(tiny_models):
    """The estimate table (CLI) prints sizes with units.format_bytes, the same function the
    window's panels import; the old copies are gone."""
    import importlib

    import studio.core.memory as memory
    from studio.core.models import read_shape
    from studio.core.quant import CPU
    from studio.core.recipe import Recipe

    assert not hasattr(memory, "format_bytes")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("studio.ui.format")
    est = memory.estimate(read_shape(tiny_models["llama"]), Recipe(), CPU)
    table = memory.format_table(est)
    assert f"{format_bytes(est.total_bytes):>10}" in table
    assert format_bytes(est.weights_bytes) in table
