"""Model-steps per second of every engine, of the PyTorch peer, and of the observables.

The workload is the paper's grid with a tenth of its seeds: 12 temperatures
T = 2^-5 … 2^6 × 12 scales σ_W = 2^-3 … 2^8 × 10 seeds = 1440 students of the
default network (3-32-16-1, tanh, |B| = 4, |D| = 4000), trained with the
``iid`` schedule. Fewer models (``--models``) take evenly spaced members of
that grid. Every available engine and the PyTorch peer
(``shared/bench/peer_torch.py`` next to the checkout, run as a subprocess with
the same number of models and as many teachers as the workload has seeds; its
students all start at σ_W = 1 and draw their own minibatches) are timed in the
same run, each as the best of
``--repeats`` runs: on a shared machine the peer's rate swings by up to 10×
from run to run (its two threads meet at a barrier every step), the best of a
few is the least disturbed.

One model-step is one SGD step of one student: 4 |B| n1 n2 = 8192 flop at the
default sizes (forward W2 φ1 and the gradient sum, multiply and add counted
apart). The limit is the rate of a large NumPy matmul measured at the start of
the same run (dgemm for float64, sgemm for float32): at 98 GFLOP/s of dgemm it
caps the rate at ~1.2e7 model-steps/s. ``fraction_of_limit`` is the engine's
flop rate over that matmul rate.

Printed lines, ``key=value`` separated by spaces::

    machine dgemm_gflops=<x> sgemm_gflops=<x> threads=<n>
    engine=peer_torch dtype=<dtype> model_steps_per_s=<x> ratio_vs_peer=1 …
    engine=peer_torch dtype=<dtype> skipped (<reason>)
    engine=<name> dtype=<dtype> model_steps_per_s=<x> ratio_vs_peer=<r> \
fraction_of_limit=<f> model_steps_per_cpu_s=<x> models=<M> steps=<S> seconds=<t>
    observables seconds_per_checkpoint=<x> engine=<name> models=<M> samples=<n> \
fraction_of_quick_training=<f> floor_at_dgemm=<f>
    simulate engine=<name> dtype=float64 model_steps_per_s=<x> \
sgd_model_steps_per_s=<x> ratio_vs_engine=<r> models=<M> steps=<S>

``ratio_vs_peer`` is ``nan`` where the peer was skipped. ``seconds`` is the
wall time of the engine's whole measurement (start, warm-up with any loading
or compiling, and every timed run), not the interval behind the rate.
``fraction_of_quick_training`` is the time of the checkpoint observables over
the training time at the schedule of ``pipelines/quick.yaml`` (30 checkpoints
in 1e5 steps), from this run's seconds per checkpoint and the engine's float64
rate: n_checkpoints · seconds · rate / (steps · M); ``nan`` where float64 was
not timed. ``floor_at_dgemm`` is the least that fraction can be with SPEC §3's
definitions at the engine's training rate: the training-set loss and
full-batch gradient norm are two products over all |D| samples,
4 n1 n2 |D| flop per model (1000 model-steps of work at the default sizes), and
at this run's dgemm rate those alone take
n_checkpoints · 4 n1 n2 |D| · rate / (dgemm · steps).

The ``simulate`` line times :func:`phasearray.simulate` on the float64
workload with the fused engine: ``model_steps_per_s`` is M S over the whole
call for S steps (set-up and the observables at t = 0 and S included);
``sgd_model_steps_per_s`` is M S over the difference between calls for 2S and
for S steps (same checkpoints, S more steps), the SGD rate inside
``simulate`` (``nan`` where those S steps take under a tenth of the call, as
in ``--tiny``); ``ratio_vs_engine`` compares it with the engine's own line.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasearray import observables as obs
from phasearray import simulate
from phasearray.checkpoint import checkpoint_observables
from phasearray.config import ENGINES, load_pipeline
from phasearray.engines import SGDProblem, available_engines, get_engine
from phasearray.ensemble import make_ensemble, sgd_problem, stream_key, teacher_outputs

__all__ = [
    "Workload",
    "default_peer_path",
    "main",
    "make_workload",
    "quick_floor",
    "quick_fraction",
]

WIDTHS = (3, 32, 16, 1)
T_GRID = 2.0 ** np.arange(-5, 7)
SIGMA_W_GRID = 2.0 ** np.arange(-3, 9)
SEEDS = 10
N_TRAIN, N_TEST, BATCH_SIZE = 4000, 128, 4

DTYPES = ("float64", "float32")
FLOP_PER_STEP = 4 * BATCH_SIZE * WIDTHS[1] * WIDTHS[2]
# The training-set loss and gradient norm of one model: W2 φ1 and the gradient
# sum over all |D| samples, multiply and add counted apart.
FLOP_PER_CHECKPOINT = 4 * N_TRAIN * WIDTHS[1] * WIDTHS[2]

# Steps run before timing, so that compilation and caches are warm.
WARMUP_STEPS = 20

# Counts of the command line, and those of --tiny (either where not given).
DEFAULTS = {"models": 1440, "steps": 2000, "peer_steps": 2000, "repeats": 3}
TINY_DEFAULTS = {"models": 24, "steps": 50, "peer_steps": 50, "repeats": 1}

# Engines whose arrays live on the host, whose observables are timed.
HOST_ENGINES = ("numba", "numpy")

# Engines timed through phasearray.simulate (the fused ones: the per-call cost
# of simulate would matter most next to them).
SIMULATE_ENGINES = ("numba", "cupy-fused")


@dataclass(frozen=True)
class Workload:
    """The benchmark's SGD problem, initial weights and test-set arrays."""

    problem: SGDProblem
    W2: np.ndarray
    test: dict[str, np.ndarray]
    simulate: dict[str, Any]


def make_workload(models: int, dtype: str = "float64") -> Workload:
    """Evenly spaced members of the 12 × 12 × 10 grid, with their data.

    Parameters
    ----------
    models : int
        Number of students M, at most 1440.
    dtype : {"float64", "float32"}
    """
    grid = np.meshgrid(T_GRID, SIGMA_W_GRID, np.arange(SEEDS), indexing="ij")
    T, sigma_W, seed = (a.ravel() for a in grid)
    chosen = np.unique(np.linspace(0, T.size - 1, models).round().astype(int))
    T, sigma_W, seed = T[chosen], sigma_W[chosen], seed[chosen]

    e = make_ensemble([stream_key(s) for s in range(SEEDS)], WIDTHS, N_TRAIN, N_TEST)
    problem = sgd_problem(
        e,
        seed,
        T * BATCH_SIZE,
        batch_size=BATCH_SIZE,
        schedule="iid",
        activation="tanh",
        dtype=dtype,
    )
    W2 = (sigma_W / np.sqrt(WIDTHS[1]))[:, None, None] * e.W2_normal[seed]

    teacher = (e.teacher_W1, e.teacher_W2, e.teacher_W3)
    phi1_test = np.tanh(e.x_test @ np.swapaxes(e.teacher_W1, 1, 2))
    test = {
        "phi1": phi1_test,
        "y": teacher_outputs(e.x_test, *teacher, "tanh"),
        "phi2_initial": obs.features(phi1_test[seed], W2, "tanh"),
    }
    arguments = {
        "teacher": tuple(layer[seed] for layer in teacher),
        "x_train": e.x_train[seed],
        "x_test": e.x_test[seed],
        "W2_init": W2,
        "learning_rate": T * BATCH_SIZE,
        "batch_size": BATCH_SIZE,
        "schedule": "iid",
        "seed": seed,
        "dtype": dtype,
    }
    return Workload(problem, W2, test, arguments)


def time_engine(
    name: str, workload: Workload, steps: int, repeats: int = 1
) -> tuple[float, float]:
    """Model-steps per wall-clock second and per CPU second of this process.

    Timed after a warm-up, with the device synchronised; the best of
    ``repeats`` runs of ``steps`` steps each. The CPU-time rate counts the
    CPU time of every thread of this process, idle-spinning BLAS and Numba
    workers included, so it does not drop when other processes share the
    cores; on an idle machine it is about the wall-clock rate divided by the
    threads kept busy. Over the milliseconds of ``--tiny`` it is noise.
    """
    engine = get_engine(name)
    state = engine.start(workload.problem, workload.W2)
    engine.advance(state, 0, WARMUP_STEPS)
    engine.to_host(state.W2)

    best_wall = best_cpu = math.inf
    t = WARMUP_STEPS
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        engine.advance(state, t, t + steps)
        engine.to_host(state.W2)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        t += steps
    model_steps = workload.problem.n_members * steps
    return model_steps / best_wall, model_steps / max(best_cpu, 1e-9)


def default_peer_path() -> Path:
    """``shared/bench/peer_torch.py`` next to the checkout holding this package."""
    return Path(__file__).resolve().parents[2] / "shared" / "bench" / "peer_torch.py"


def run_peer(
    path: Path,
    models: int,
    steps: int,
    dtype: str,
    repeats: int = 1,
    threads: int | None = None,
) -> tuple[float, str]:
    """Best rate of ``repeats`` runs of the PyTorch peer as a subprocess.

    ``threads`` sets OMP_NUM_THREADS for it (PyTorch's default: all cores).
    Returns (nan, reason) where it cannot run.
    """
    if not path.is_file():
        return math.nan, f"peer script not found: {path}"
    command = [sys.executable, str(path), "--models", str(models)]
    command += ["--steps", str(steps), "--dtype", dtype, "--teachers", str(SEEDS)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    best = math.nan
    for _ in range(repeats):
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=env
        )
        found = re.search(r"model_steps_per_s=(\S+)", result.stdout)
        if result.returncode != 0 or found is None:
            if importlib.util.find_spec("torch") is None:
                return math.nan, "torch is not installed; pip install torch==2.13.0"
            lines = (result.stderr or result.stdout).strip().splitlines() or [""]
            return math.nan, f"peer failed, exit code {result.returncode}: {lines[-1]}"
        best = np.fmax(best, float(found.group(1)))
    return float(best), ""


def time_observables(name: str, workload: Workload, repeats: int = 3) -> float:
    """Seconds for one checkpoint's observables of every member (best of a few).

    The same code as a sweep's checkpoint
    (:func:`phasearray.checkpoint.checkpoint_observables`): the engine's
    ``train_observables`` and ``test_observables`` (the checkpoint kernels on
    ``numba``, :mod:`phasearray.observables` on ``numpy``) and the
    eigenvalues.
    """
    engine = get_engine(name)
    state = engine.start(workload.problem, workload.W2)
    checkpoint_observables(engine, state, workload.test)  # compile, warm caches
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        checkpoint_observables(engine, state, workload.test)
        best = min(best, time.perf_counter() - start)
    return best


def time_simulate(
    name: str, workload: Workload, steps: int, repeats: int = 2
) -> tuple[float, float]:
    """Rates of :func:`phasearray.simulate`: whole call, and its SGD alone.

    Returns
    -------
    overall, sgd : float
        M S / t(S) and M S / (t(2S) − t(S)), model-steps/s, where t(n) is the
        best wall time of ``repeats`` calls for n steps with checkpoints at 0
        and n only; ``sgd`` is nan where t(2S) − t(S) < t(S) / 10, too small
        against the run-to-run spread of the rest of the call to measure.
    """

    def best_seconds(n: int) -> float:
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            simulate(**workload.simulate, steps=n, checkpoints=[], engine=name)
            best = min(best, time.perf_counter() - start)
        return best

    best_seconds(1)  # compile, warm caches
    once, twice = best_seconds(steps), best_seconds(2 * steps)
    model_steps = workload.problem.n_members * steps
    sgd = model_steps / (twice - once) if twice - once >= once / 10 else math.nan
    return model_steps / once, sgd


def quick_fraction(seconds: float, models: int, rate: float) -> float:
    """Checkpoint observables over training time at quick.yaml's schedule.

    Parameters
    ----------
    seconds : float
        One checkpoint's observables of ``models`` members.
    rate : float
        The engine's training rate, model-steps/s.

    Returns
    -------
    float
        n_checkpoints · seconds · rate / (steps · models), with quick.yaml's
        checkpoints and steps; ``nan`` where ``rate`` is.
    """
    return _quick_checkpoints_per_step() * seconds * rate / models


def quick_floor(gflops: float, rate: float) -> float:
    """The least checkpoint share of quick.yaml's training SPEC §3 allows.

    Parameters
    ----------
    gflops : float
        The float64 matmul rate measured in this run, GFLOP/s.
    rate : float
        The engine's training rate, model-steps/s.

    Returns
    -------
    float
        n_checkpoints · FLOP_PER_CHECKPOINT · rate / (gflops · 1e9 · steps):
        the training-set products of every checkpoint at the matmul rate, over
        the training time at ``rate``; ``nan`` where ``rate`` is.
    """
    flop_rate = gflops * 1e9
    return _quick_checkpoints_per_step() * FLOP_PER_CHECKPOINT * rate / flop_rate


@functools.cache
def _quick_checkpoints_per_step() -> float:
    """Checkpoints per SGD step of ``pipelines/quick.yaml`` (30 in 1e5)."""
    quick = load_pipeline("quick")
    return len(quick.checkpoints) / quick.train.steps


def matmul_gflops(dtype: str, n: int = 1500, repeats: int = 3) -> float:
    """GFLOP/s of an n × n NumPy matmul here (best of a few)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def engine_line(
    name: str, dtype: str, rate: float, peer: float, gflops: float, **extra: Any
) -> str:
    """One printed line; ``gflops`` is the matmul rate that sets the limit."""
    limit = gflops * 1e9 / FLOP_PER_STEP
    fields = {
        "engine": name,
        "dtype": dtype,
        "model_steps_per_s": f"{rate:.4g}",
        "ratio_vs_peer": f"{rate / peer:.3g}",
        "fraction_of_limit": f"{rate / limit:.3g}",
        **extra,
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked: counts positive, at most 1440 models."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time every SGD engine and the PyTorch peer on one workload.",
    )
    parser.add_argument("--models", type=int, help="students (≤ 1440; 1440)")
    parser.add_argument("--steps", type=int, help="timed SGD steps (2000)")
    parser.add_argument(
        "--dtypes", default="float64,float32", help="comma-separated (float64,float32)"
    )
    parser.add_argument(
        "--engines", default="all", help="comma-separated names, or all available"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed runs per engine; best is kept (3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the numba engine and of the peer (default: all cores)",
    )
    parser.add_argument("--peer", type=Path, default=None, help="peer_torch.py path")
    parser.add_argument("--peer-steps", type=int, help="steps of each peer run (2000)")
    parser.add_argument("--no-peer", action="store_true", help="skip the peer")
    parser.add_argument(
        "--no-observables", action="store_true", help="skip the observables timing"
    )
    parser.add_argument(
        "--no-simulate", action="store_true", help="skip timing phasearray.simulate"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a smoke test: by default 24 models, 50 steps, one run each",
    )
    args = parser.parse_args(argv)
    defaults = TINY_DEFAULTS if args.tiny else DEFAULTS
    for option, value in defaults.items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    if not 1 <= args.models <= T_GRID.size * SIGMA_W_GRID.size * SEEDS:
        parser.error(f"--models must be between 1 and 1440, got {args.models}")
    for option in ("steps", "peer_steps", "repeats", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            flag = "--" + option.replace("_", "-")
            parser.error(f"{flag} must be positive, got {getattr(args, option)}")
    return args


def engine_names(choice: str) -> list[str] | None:
    """Engines to time: every available one, or those named that are available.

    Named engines that exist but are unavailable here are reported as skipped;
    a name that is no engine is an error (``None``, after saying so).
    """
    available = available_engines()
    if choice == "all":
        return available
    names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES or n == "auto"]
    if unknown or not names:
        allowed = ", ".join(e for e in ENGINES if e != "auto")
        found = f"unknown {unknown}" if unknown else "no engine named"
        print(f"--engines {choice!r}: {found}; choose all or some of {allowed}")
        return None
    for name in names:
        if name not in available:
            print(f"engine={name} skipped (not available here)", flush=True)
    return [n for n in names if n in available]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 for a bad option."""
    args = parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown or not dtypes:
        found = f"unknown {unknown}" if unknown else "no dtype named"
        print(
            f"--dtypes {args.dtypes!r}: {found}; choose float64 and/or float32",
            flush=True,
        )
        return 2
    names = engine_names(args.engines)
    if names is None:
        return 2

    threads = _threads(args.threads)
    gflops = {d: matmul_gflops(d) for d in DTYPES}
    print(
        f"machine dgemm_gflops={gflops['float64']:.3g} "
        f"sgemm_gflops={gflops['float32']:.3g} threads={threads}",
        flush=True,
    )
    rates: dict[tuple[str, str], float] = {}
    workloads = {d: make_workload(args.models, d) for d in {*dtypes, "float64"}}
    for dtype in dtypes:
        workload = workloads[dtype]
        peer = _peer_line(args, workload, dtype, gflops[dtype], threads)
        for name in names:
            rates[name, dtype] = _engine_line(args, name, workload, peer, gflops)

    workload = workloads["float64"]
    if not args.no_observables:
        for name in [n for n in names if n in HOST_ENGINES]:
            _observables_line(name, workload, rates, gflops["float64"])
    if not args.no_simulate and "float64" in dtypes:
        for name in [n for n in names if n in SIMULATE_ENGINES]:
            _simulate_line(args, name, workload, rates[name, "float64"])
    return 0


def _peer_line(
    args: argparse.Namespace,
    workload: Workload,
    dtype: str,
    gflops: float,
    threads: int,
) -> float:
    """Time the peer (or say why not) and print its line; its rate or nan."""
    M = workload.problem.n_members
    if args.no_peer:
        peer, reason = math.nan, "--no-peer"
    else:
        path = args.peer or default_peer_path()
        wanted = None if args.threads is None else threads
        peer, reason = run_peer(path, M, args.peer_steps, dtype, args.repeats, wanted)
    if math.isnan(peer):
        print(f"engine=peer_torch dtype={dtype} skipped ({reason})", flush=True)
        return peer
    line = engine_line(
        "peer_torch", dtype, peer, peer, gflops, models=M, steps=args.peer_steps
    )
    print(line, flush=True)
    return peer


def _engine_line(
    args: argparse.Namespace,
    name: str,
    workload: Workload,
    peer: float,
    gflops: dict[str, float],
) -> float:
    """Time one engine, print its line; its rate, model-steps/s."""
    dtype = workload.problem.dtype
    start = time.perf_counter()
    rate, cpu_rate = time_engine(name, workload, args.steps, args.repeats)
    line = engine_line(
        name,
        dtype,
        rate,
        peer,
        gflops[dtype],
        model_steps_per_cpu_s=f"{cpu_rate:.4g}",
        models=workload.problem.n_members,
        steps=args.steps,
        seconds=f"{time.perf_counter() - start:.3g}",
    )
    print(line, flush=True)
    return rate


def _observables_line(
    name: str,
    workload: Workload,
    rates: dict[tuple[str, str], float],
    dgemm_gflops: float,
) -> None:
    """Time one checkpoint's observables on a host engine and print the line."""
    seconds = time_observables(name, workload)
    M = workload.problem.n_members
    rate = rates.get((name, "float64"), math.nan)
    fraction = quick_fraction(seconds, M, rate)
    floor = quick_floor(dgemm_gflops, rate)
    print(
        f"observables seconds_per_checkpoint={seconds:.3g} engine={name} "
        f"models={M} samples={N_TRAIN} "
        f"fraction_of_quick_training={fraction:.3g} floor_at_dgemm={floor:.3g}",
        flush=True,
    )


def _simulate_line(
    args: argparse.Namespace, name: str, workload: Workload, engine_rate: float
) -> None:
    """Time :func:`phasearray.simulate` with one engine and print the line."""
    overall, sgd = time_simulate(name, workload, args.steps)
    print(
        f"simulate engine={name} dtype=float64 model_steps_per_s={overall:.4g} "
        f"sgd_model_steps_per_s={sgd:.4g} ratio_vs_engine={sgd / engine_rate:.3g} "
        f"models={workload.problem.n_members} steps={args.steps}",
        flush=True,
    )


def _threads(wanted: int | None) -> int:
    """Set the numba engine's threads where asked; the number it will use."""
    try:
        import numba
    except ImportError:
        return 1
    if wanted is not None:
        most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        if wanted > most:
            print(f"--threads {wanted}: this machine runs at most {most}", flush=True)
        numba.set_num_threads(min(wanted, most))
    return int(numba.get_num_threads())
