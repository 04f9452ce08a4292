"""``qlora-studio gpus [--json]`` run for real in a subprocess, with and without simulated GPUs."""

from __future__ import annotations

import json
import sys

from test_cli_basics import assert_light, run_cli

from studio.core.gpu import FAKE_GPUS_ENV

MIB = 1024 * 1024
FAKES = [
    {
        "name": "NVIDIA GeForce RTX 2080 Ti",
        "total_mib": 11264,
        "free_mib": 10900,
        "compute_capability": [7, 5],
    },
    {
        "name": "NVIDIA A100-SXM4-80GB",
        "total_mib": 81920,
        "free_mib": 80000,
        "used_mib": 1500,
        "compute_capability": [8, 0],
        "driver_version": "550.54.14",
    },
]


def gpus(*args: str, fakes: str | None = None):
    env = {FAKE_GPUS_ENV: fakes} if fakes is not None else None
    return run_cli(sys.executable, "-m", "studio", "gpus", *args, env=env)


def test_json_on_this_machine():
    done = gpus("--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert set(report) == {"gpus", "source", "reason"}
    if report["source"] == "none":  # no driver here: no GPUs and the reason
        assert report["gpus"] == [] and report["reason"]
    else:
        assert report["source"] == "nvml" and report["gpus"] and report["reason"] is None
        assert all(g["total_bytes"] >= g["free_bytes"] > 0 for g in report["gpus"])
    assert_light(done)


def test_table_on_this_machine():
    done = gpus()
    assert done.returncode == 0, done.stderr[-3000:]
    if json.loads(gpus("--json").stdout)["source"] == "none":
        assert done.stdout.startswith("No NVIDIA GPU found: ")
        assert "Training will use the CPU." in done.stdout
    else:
        assert done.stdout.splitlines()[0].split()[:2] == ["#", "Name"]


def test_json_with_simulated_gpus():
    done = gpus("--json", fakes=json.dumps(FAKES))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["source"] == "simulated" and report["reason"] is None
    turing, ampere = report["gpus"]
    assert turing == {
        "index": 0,
        "name": "NVIDIA GeForce RTX 2080 Ti",
        "total_bytes": 11264 * MIB,
        "free_bytes": 10900 * MIB,
        "used_bytes": 364 * MIB,
        "compute_capability": [7, 5],
        "driver_version": None,
        "simulated": True,
        "bf16_supported": False,
    }
    assert ampere["bf16_supported"] is True and ampere["used_bytes"] == 1500 * MIB
    assert ampere["driver_version"] == "550.54.14"


def test_table_with_simulated_gpus():
    done = gpus(fakes=json.dumps(FAKES))
    assert done.returncode == 0, done.stderr[-3000:]
    header, rule, turing, ampere = done.stdout.splitlines()
    for column in ("Name", "Total GiB", "Free GiB", "Used GiB", "CC", "bf16", "Driver"):
        assert column in header
    assert set(rule) <= {"-", " "}
    assert turing.split()[0] == "0" and "NVIDIA GeForce RTX 2080 Ti (simulated)" in turing
    assert turing.split()[-6:] == ["11.00", "10.64", "0.36", "7.5", "no", "-"]
    assert ampere.split()[-6:] == ["80.00", "78.12", "1.46", "8.0", "yes", "550.54.14"]


def test_malformed_simulated_gpus_is_bad_input():
    done = gpus("--json", fakes='[{"name": "RTX", "total_mib": 1024}]')
    assert done.returncode == 2
    assert done.stdout == ""
    assert FAKE_GPUS_ENV in done.stderr and "entry 0 lacks the key 'free_mib'" in done.stderr
    assert "Traceback" not in done.stderr
