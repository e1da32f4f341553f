"""The benchmark runner, ``python -m benchmarks``, on a tiny workload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def fields(line: str) -> dict[str, str]:
    """``key=value`` items of a printed line."""
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def run_benchmarks(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return result.stdout.splitlines()


def test_tiny_run_prints_positive_rates_for_each_engine() -> None:
    lines = run_benchmarks(
        "--models", "24", "--steps", "50", "--no-peer", "--engines", "numpy,numba"
    )
    engines = [fields(ln) for ln in lines if ln.startswith("engine=")]
    timed = [e for e in engines if "model_steps_per_s" in e]
    assert {(e["engine"], e["dtype"]) for e in timed} == {
        (name, dtype) for name in ("numpy", "numba") for dtype in ("float64", "float32")
    }
    for e in timed:
        assert float(e["model_steps_per_s"]) > 0
        assert float(e["fraction_of_limit"]) > 0
        assert np.isnan(float(e["ratio_vs_peer"]))  # no peer in this run
        assert (e["models"], e["steps"]) == ("24", "50")

    skipped = [ln for ln in lines if ln.startswith("engine=peer_torch")]
    assert len(skipped) == 2
    assert all(ln.endswith("skipped (--no-peer)") for ln in skipped)

    observables = [fields(ln) for ln in lines if ln.startswith("observables ")]
    assert {o["engine"] for o in observables} == {"numpy", "numba"}
    for o in observables:
        assert float(o["seconds_per_checkpoint"]) > 0
        assert o["models"] == "24"
        assert float(o["fraction_of_quick_training"]) > 0
        assert float(o["floor_at_dgemm"]) > 0

    (simulate,) = [fields(ln) for ln in lines if ln.startswith("simulate ")]
    assert (simulate["engine"], simulate["models"]) == ("numba", "24")
    assert float(simulate["model_steps_per_s"]) > 0

    machine = fields(next(ln for ln in lines if ln.startswith("machine ")))
    assert float(machine["dgemm_gflops"]) > 0


def test_quick_fraction_counts_quick_yaml_checkpoints_and_steps() -> None:
    from benchmarks.runner import quick_fraction

    # 30 checkpoints of 0.1 s for 1000 models training at 1e7 model-steps/s:
    # 3 s against 1e5 · 1000 / 1e7 = 10 s of training
    assert quick_fraction(0.1, 1000, 1e7) == pytest.approx(0.3, rel=1e-12)


def test_quick_floor_is_the_training_set_products_at_the_matmul_rate() -> None:
    from benchmarks.runner import quick_floor

    # per model and checkpoint 4 · 4000 · 32 · 16 = 8.192e6 flop: 30 checkpoints
    # at 100 GFLOP/s take 2.4576e-3 s a model, 1e5 steps at 1e7 model-steps/s
    # take 1e-2 s a model
    assert quick_floor(100.0, 1e7) == pytest.approx(0.24576, rel=1e-12)


def test_a_missing_peer_is_reported_as_skipped(tmp_path: Path) -> None:
    lines = run_benchmarks(
        "--tiny",
        "--dtypes",
        "float64",
        "--engines",
        "numba",
        "--no-observables",
        "--peer",
        str(tmp_path / "absent.py"),
    )
    (peer,) = [ln for ln in lines if ln.startswith("engine=peer_torch")]
    assert peer.startswith("engine=peer_torch dtype=float64 skipped (peer script")
    (numba_line,) = [fields(ln) for ln in lines if ln.startswith("engine=numba")]
    assert float(numba_line["model_steps_per_s"]) > 0


# A stand-in for peer_torch.py: notes its arguments and thread setting, and
# prints a fixed rate in the peer's format.
STUB_PEER = """
import os, sys
threads = os.environ.get("OMP_NUM_THREADS", "-")
with open(sys.argv[0] + ".calls", "a") as calls:
    print(*sys.argv[1:], f"threads={threads}", file=calls)
print("peer_torch model_steps_per_s=1000 models=24 steps=50")
"""


def test_the_peer_gets_the_workload_and_sets_the_ratio(tmp_path: Path) -> None:
    peer = tmp_path / "peer.py"
    peer.write_text(STUB_PEER)
    lines = run_benchmarks(
        "--tiny", "--dtypes", "float64", "--engines", "numba", "--threads", "1",
        "--no-observables", "--no-simulate", "--peer", str(peer),
    )  # fmt: skip
    (call,) = (tmp_path / "peer.py.calls").read_text().splitlines()
    assert call == "--models 24 --steps 50 --dtype float64 --teachers 10 threads=1"
    (peer_line,) = [fields(ln) for ln in lines if ln.startswith("engine=peer_torch")]
    assert float(peer_line["model_steps_per_s"]) == 1000
    (numba_line,) = [fields(ln) for ln in lines if ln.startswith("engine=numba")]
    # the ratio is of the unrounded rate; the printed rate has 4 digits
    rate, ratio = (float(numba_line[k]) for k in ("model_steps_per_s", "ratio_vs_peer"))
    assert ratio == pytest.approx(rate / 1000, rel=5e-3)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--engines", "nosuch"), "--engines 'nosuch': unknown ['nosuch']"),
        (("--dtypes", "float16"), "--dtypes 'float16': unknown ['float16']"),
        (("--dtypes", ""), "--dtypes '': no dtype named"),
        (("--engines", ","), "--engines ',': no engine named"),
        (("--models", "0"), ""),
        (("--steps", "-5"), ""),
    ],
)
def test_bad_options_exit_2(option, message) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--no-peer", *option],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert result.stdout.startswith(message)
    if not message:  # argparse's own error, with --tiny too
        flag = option[0]
        assert f"error: {flag} must be" in result.stderr


def test_simulate_times_the_same_training_as_the_engine() -> None:
    import phasearray
    from benchmarks.runner import make_workload
    from phasearray.engines import get_engine

    workload = make_workload(24)
    engine = get_engine("numba")
    state = engine.start(workload.problem, workload.W2)
    engine.advance(state, 0, 30)
    ds = phasearray.simulate(
        **workload.simulate, steps=30, checkpoints=[], engine="numba"
    )
    np.testing.assert_array_equal(ds.W2.isel(t=-1).values, state.W2)
