"""``scripts/device_check.py --cpu-smoke``: the prepared GPU check, run here.

The GPU half cannot run without a GPU; the smoke run takes every step of the
script (machine report, GPU tests, engine timing, pipeline end to end) with
the NumPy engine on a tiny problem, so the script itself is known to work
before device time is spent on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_smoke_run_takes_every_step(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "device_check.py"), "--cpu-smoke"],
        cwd=REPO,
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]

    report = (tmp_path / "gpu_results.md").read_text()
    assert "failed with" not in report and "skipped, the" not in report
    assert re.search(r"- tests \(.*exit 0\): \d+ passed", report)
    rates = re.findall(
        r"\| numpy \| (float64|float32) \| shuffle \| ([0-9.e+]+) \|", report
    )
    assert sorted(dtype for dtype, _ in rates) == ["float32", "float64"]
    assert all(float(rate) > 0 for _, rate in rates)
    assert "- pipeline `phasearray run quick" in report and ": exit 0," in report
    assert list(tmp_path.glob("fig*.png"))  # a few of the figures come back
