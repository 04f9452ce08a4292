"""Tokenizing stays bounded in memory whatever a line's length: text that can never fit in
max_length tokens is cut before the tokenizer sees it. Measured in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MEASURE = """
import json, resource, sys
sys.path.insert(0, sys.argv[3])
from tiny_models import make_tokenizer
from studio.core import data
from studio.core.recipe import Recipe

def section(path):
    return Recipe().with_changes(
        dataset={"path": path, "max_length": 64, "validation_split": 0}
    ).dataset

tokenizer = make_tokenizer()
data.prepare_datasets(section(sys.argv[1]), tokenizer)  # warm up: imports, caches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepared = data.prepare_datasets(section(sys.argv[2]), tokenizer)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "truncated": prepared.stats.truncated,
                  "examples": prepared.stats.examples}))
"""

ROWS = [
    {"instruction": f"Say hello {i}.", "input": "", "output": "Hello there, friend!"}
    for i in range(40)
]
FILLER = "lorem ipsum dolor sit amet "


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _measure(warm: Path, target: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(warm), str(target), str(REPO / "tests")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_huge_line_costs_no_more_than_the_same_bytes_in_normal_lines(tmp_path):
    size = 4 * 2**20  # a 4 MB answer on one line
    normal = _write(tmp_path / "normal.jsonl", ROWS)
    huge = dict(ROWS[0], output=FILLER * (size // len(FILLER)))
    one_line = _write(tmp_path / "one-line.jsonl", [*ROWS, huge])
    # The same bytes as many examples of ordinary length (each longer than max_length too).
    spread_rows = [dict(ROWS[0], output=FILLER * 60) for _ in range(size // (60 * len(FILLER)))]
    spread = _write(tmp_path / "spread.jsonl", [*ROWS, *spread_rows])

    big = _measure(normal, one_line)
    same_bytes = _measure(normal, spread)
    assert big["truncated"] == 1 and big["examples"] == 41
    # Before the cut, the one line made the tokenizer grow the process by over 1.3 GiB (40x
    # the spread file); now it costs less than the spread file, and a few times the line.
    assert big["growth_kib"] <= max(same_bytes["growth_kib"], 1), (big, same_bytes)
    assert big["growth_kib"] * 1024 < 8 * size, big
