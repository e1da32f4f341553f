"""One prepared check of the GPU engines on an NVIDIA machine (written for an H200).

Two halves, run on two machines (docs/gpu.md has the whole procedure):

Here, with network access, collect what the GPU machine lacks::

    python scripts/device_check.py --prepare .device

On the GPU machine, from the repository root, in at most ~8 minutes::

    python3 scripts/device_check.py --carried .device

The check installs the carried wheels that are missing there, runs the GPU
tests with pytest, measures model-steps/s of both CuPy engines (float64 and
float32, 14 400 models = the paper's 12 × 12 grid × 100 seeds) and of the
PyTorch peer, runs the ``quick`` pipeline end to end with engine
``cupy-fused``, and writes a markdown block of results to
``$OUT/gpu_results.md`` (``./gpu_results.md`` where OUT is unset) with the
full log beside it. A step starts only where its own time limit still ends
inside the device tool's 600 s.

``--cpu-smoke`` runs the same steps with engine ``numpy`` on a tiny problem,
to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_FILES = (
    "cases/phase_ml_tanh_T0.125_sigma0.5.npz",
    "bench/peer_torch.py",
)
SITE = Path(tempfile.gettempdir()) / "phasearray-site"

# Budget of the whole check and of its parts, in seconds.
BUDGET = 480
PYTEST_TIMEOUT = 170
PIPELINE_TIMEOUT = 150
PEER_TIMEOUT = 60
# The device tool ends a command after 600 s; every step must end before.
HARD_LIMIT = 570
STEP_LIMITS = {
    "tests": PYTEST_TIMEOUT,
    "peer": PEER_TIMEOUT,
    "pipeline": PIPELINE_TIMEOUT,
}

# Runtime needs of phasearray that the GPU machine's image lacks (its image
# has numpy, pandas, xarray, numba, cupy, matplotlib, pyyaml, tqdm, pytest and
# the small pure-Python packages). --prepare fetches their closure without
# numpy; the check installs a wheel only where that package is missing or
# older there.
ROOTS = ("dask", "distributed", "zarr", "numcodecs", "pydantic")
NEVER_CARRIED = {"numpy"}
DEVICE_PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


# --- here: collect what the GPU machine needs -----------------------------------------


def prepare(folder: Path) -> None:
    """Download wheels and copy the shared files the check reads into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = dependency_pins(ROOTS)
    wheels = folder / "wheels"
    wheels.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
    command += ["--only-binary=:all:", "--python-version", DEVICE_PYTHON]
    command += ["--implementation", "cp", "-d", str(wheels)]
    for tag in PLATFORMS:
        command += ["--platform", tag]
    subprocess.run([*command, *pins], check=True)

    shared = REPO.parent / "shared"
    for name in SHARED_FILES:
        target = folder / "shared" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared / name, target)
    (folder / "commit.txt").write_text(git_description() + "\n")

    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"prepared {folder}: {len(pins)} wheels, {size / 2**20:.1f} MiB")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(folder)], cwd=REPO
    ).returncode
    if ignored != 0:
        print(
            f"add '/{folder.name}/' to .git/info/exclude so that it is carried, not committed"
        )
    print(
        f"run there: python3 scripts/device_check.py --carried {folder.name}  (carry {folder.name})"
    )


def dependency_pins(roots: tuple[str, ...]) -> list[str]:
    """``name==version`` of the roots and their needs, as installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    environment = {"python_version": DEVICE_PYTHON, "extra": ""}
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found or key in NEVER_CARRIED:
            continue
        distribution = metadata.distribution(name)
        found[key] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(found.items())]


def git_description() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "unknown"


# --- there: the environment -----------------------------------------------------------


class Report:
    """Markdown lines for gpu_results.md and a fuller log beside it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = []
        self.log_path = out / "device_check.log"
        self.log_path.write_text("")
        self.started = time.perf_counter()

    def add(self, line: str = "") -> None:
        self.lines.append(line)
        self.log(line)
        self.write()

    def log(self, text: str) -> None:
        stamp = f"[{time.perf_counter() - self.started:6.1f} s] "
        with self.log_path.open("a") as log:
            log.write(stamp + text + "\n")
        print(stamp + text, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write(self) -> None:
        (self.out / "gpu_results.md").write_text("\n".join(self.lines) + "\n")


def set_up(carried: Path | None, report: Report) -> dict[str, str]:
    """Install missing wheels, find ../shared; the environment for subprocesses."""
    paths = [str(REPO)]
    if carried is not None and (carried / "wheels").is_dir():
        installed = install_missing_wheels(carried / "wheels", report)
        if installed:
            paths.append(str(SITE))
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    importlib.invalidate_caches()

    shared = REPO.parent / "shared"
    if not shared.exists() and carried is not None and (carried / "shared").is_dir():
        try:
            shared.symlink_to((carried / "shared").resolve(), target_is_directory=True)
            report.log(f"linked {shared} -> {carried / 'shared'}")
        except OSError as error:
            report.log(f"cannot link {shared}: {error}; the authors' case test skips")

    environment = dict(os.environ)
    old = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def install_missing_wheels(folder: Path, report: Report) -> list[str]:
    """pip-install (into SITE) each wheel whose package is absent or older here."""
    from importlib import metadata

    from packaging.version import Version

    chosen = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        try:
            present = metadata.version(name)
        except metadata.PackageNotFoundError:
            present = None
        if present is None or Version(present) < Version(version):
            chosen.append(wheel)
    if chosen:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index"]
        command += ["--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"]
        command += ["--target", str(SITE), *map(str, chosen)]
        subprocess.run(command, check=True)
    report.log(f"installed from wheels: {', '.join(w.name for w in chosen) or 'none'}")
    return [w.name for w in chosen]


def describe_machine(report: Report, carried: Path | None, label: str) -> None:
    import numpy

    commit = "unknown"
    if carried is not None and (carried / "commit.txt").is_file():
        commit = (carried / "commit.txt").read_text().strip()
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report.add(f"### GPU check, {label}, {today}")
    report.add()
    parts = [f"commit {commit}", f"Python {platform.python_version()}"]
    parts.append(f"NumPy {numpy.__version__}")
    try:
        import cupy

        device = cupy.cuda.runtime.getDeviceProperties(0)
        name = (
            device["name"].decode()
            if isinstance(device["name"], bytes)
            else device["name"]
        )
        parts.insert(0, f"{name} ({device['multiProcessorCount']} SMs)")
        parts.append(f"CuPy {cupy.__version__}")
        parts.append(f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
        parts.append(f"driver {cupy.cuda.runtime.driverGetVersion()}")
    except Exception as error:
        parts.append(f"CuPy unavailable: {error}")
    report.add("- machine: " + ", ".join(parts))


# --- there: tests ---------------------------------------------------------------------


def run_tests(report: Report, environment: dict[str, str]) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    command += ["tests/test_engines_gpu.py"]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=PYTEST_TIMEOUT,
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = as_text(expired.stdout), f"timeout after {PYTEST_TIMEOUT} s"
    report.log(output)
    summary = [
        line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)
    ]
    seconds = time.perf_counter() - started
    report.add(
        f"- tests (`pytest tests/test_engines_gpu.py`, {seconds:.0f} s, exit {code}): "
        f"{summary[-1].strip('= ') if summary else 'no summary line'}"
    )
    failed = [line for line in output.splitlines() if line.startswith("FAILED")]
    for line in failed[:10]:
        report.add(f"  - {line}")


def as_text(captured: bytes | str | None) -> str:
    """Output captured by a subprocess that timed out (bytes even with text=True)."""
    if isinstance(captured, bytes):
        return captured.decode(errors="replace")
    return captured or ""


# --- there: model-steps per second ----------------------------------------------------


def sweep_problem(n_seeds: int, dtype: str, schedule: str, n_train: int = 4000):
    """The paper's 12 × 12 grid × n_seeds, common random numbers per seed."""
    import numpy as np

    from phasearray.ensemble import make_ensemble, sgd_problem, stream_key

    widths, batch_size = (3, 32, 16, 1), 4
    T = 2.0 ** np.arange(-5, 7)
    sigma_W = 2.0 ** np.arange(-3, 9)
    keys = [stream_key(s) for s in range(n_seeds)]
    ensemble = make_ensemble(keys, widths, n_train=n_train, n_test=128)

    cell_T, cell_sigma = (a.ravel() for a in np.meshgrid(T, sigma_W, indexing="ij"))
    member_stream = np.repeat(np.arange(n_seeds), cell_T.size)
    learning_rate = np.tile(cell_T, n_seeds) * batch_size
    scale = np.tile(cell_sigma, n_seeds) / np.sqrt(widths[1])
    W2 = scale[:, None, None] * ensemble.W2_normal[member_stream]
    problem = sgd_problem(
        ensemble,
        member_stream,
        learning_rate,
        batch_size=batch_size,
        schedule=schedule,
        activation="tanh",
        dtype=dtype,
    )
    return problem, W2


def synchronize(engine) -> None:
    if engine.xp.__name__ == "cupy":
        engine.xp.cuda.Device().synchronize()


def advance_rate(engine, state, t0: int, steps: int) -> float:
    """Model-steps/s of engine.advance, host index generation included."""
    synchronize(engine)
    started = time.perf_counter()
    engine.advance(state, t0, t0 + steps)
    synchronize(engine)
    return state.problem.n_members * steps / (time.perf_counter() - started)


def kernel_rate(engine, state, t0: int, steps: int) -> float:
    """Model-steps/s of the launches alone (indices made beforehand)."""
    import numpy as np

    indices = np.ascontiguousarray(
        state.problem.indices(t0, t0 + steps), dtype=np.int32
    )
    synchronize(engine)
    started = time.perf_counter()
    engine._run_chunk(state, indices)
    synchronize(engine)
    return state.problem.n_members * steps / (time.perf_counter() - started)


def measure_engines(
    report: Report, engine_names, n_seeds: int, deadline: float
) -> None:
    from phasearray.engines import get_engine

    report.add()
    report.add(
        f"model-steps/s, {n_seeds * 144} models (12 × 12 grid × {n_seeds} seeds), "
        f"n_train 4000, |B| 4, tanh; 'advance' includes making the minibatch "
        f"indices on the host, 'kernel' is the launches alone:"
    )
    report.add()
    report.add("| engine | dtype | schedule | advance | kernel | steps timed |")
    report.add("|---|---|---|---|---|---|")
    for name in engine_names:
        for dtype in ("float64", "float32"):
            if time.perf_counter() > deadline:
                report.add(f"| {name} | {dtype} | | skipped: time budget spent | | |")
                continue
            try:
                row = measure_one(get_engine(name), n_seeds, dtype)
            except Exception as error:
                report.log(traceback.format_exc())
                row = f"| {name} | {dtype} | | failed: {type(error).__name__}: {error} | | |"
            report.add(row)


def measure_one(engine, n_seeds: int, dtype: str) -> str:
    problem, W2 = sweep_problem(n_seeds, dtype, "shuffle")
    state = engine.start(problem, W2)
    engine.advance(state, 0, 64)  # compiles, warms caches
    probe = advance_rate(engine, state, 64, 256)
    steps = int(min(4 * 8192, max(256, 1.5 * probe / problem.n_members)))
    advance = advance_rate(engine, state, 320, steps)
    kernel = ""
    if hasattr(engine, "_launch"):
        chunk = min(steps, 8192)
        kernel = f"{kernel_rate(engine, state, 320 + steps, chunk):.3g}"
    return f"| {engine.name} | {dtype} | shuffle | {advance:.3g} | {kernel} | {steps} |"


def measure_kernel_shape(report: Report, n_seeds: int) -> None:
    """Registers and warps-per-block sweep of the fused kernel, float64."""
    from phasearray.engines.gpu import CupyFusedEngine, _compiled_kernel

    problem, W2 = sweep_problem(n_seeds, "float64", "sequential")
    rates = []
    for warps in (1, 2, 4, 8):
        engine = CupyFusedEngine(warps_per_block=warps)
        state = engine.start(problem, W2)
        engine.advance(state, 0, 64)
        rate = kernel_rate(engine, state, 64, 8192)
        kernel = _compiled_kernel(state.arrays["kernel_config"])
        rates.append(
            f"{warps}: {rate:.3g} ({kernel.num_regs} registers, "
            f"{kernel.local_size_bytes} B local)"
        )
    report.add()
    report.add(
        "- cupy-fused float64, kernel model-steps/s by warps per block: "
        + "; ".join(rates)
    )


def measure_peer(report: Report, environment: dict[str, str], n_models: int) -> None:
    peer = REPO.parent / "shared" / "bench" / "peer_torch.py"
    if importlib.util.find_spec("torch") is None or not peer.is_file():
        report.add(
            "- peer_torch: not run (torch or ../shared/bench/peer_torch.py missing)"
        )
        return
    for dtype in ("float64", "float32"):
        command = [
            sys.executable,
            str(peer),
            "--device",
            "cuda",
            "--models",
            str(n_models),
        ]
        command += ["--steps", "1000", "--dtype", dtype]
        try:
            done = subprocess.run(
                command,
                env=environment,
                capture_output=True,
                text=True,
                timeout=PEER_TIMEOUT,
            )
            lines = (done.stdout + done.stderr).strip().splitlines()
            line = lines[-1] if lines else f"exit {done.returncode}, no output"
        except subprocess.TimeoutExpired:
            line = f"timed out after {PEER_TIMEOUT} s"
        report.add(f"- peer_torch {dtype}: `{line}`")


# --- there: the pipeline end to end ---------------------------------------------------


def run_pipeline(
    report: Report, environment: dict[str, str], engine: str, overrides
) -> None:
    work = Path(tempfile.gettempdir()) / "phasearray-device-check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store, figures = work / "quick.zarr", work / "figures"
    entry = "import sys; from phasearray.cli import main; sys.exit(main(sys.argv[1:]))"
    arguments = ["run", "quick", "--store", str(store), "--figures", str(figures)]
    arguments += ["--set", f"engine.name={engine}"]
    for item in overrides:
        arguments += ["--set", item]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", entry, *arguments],
            cwd=work,
            env=environment,
            capture_output=True,
            text=True,
            timeout=PIPELINE_TIMEOUT,
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = as_text(expired.stdout), f"timeout after {PIPELINE_TIMEOUT} s"
    seconds = time.perf_counter() - started
    report.log(output)
    summary = [line for line in output.splitlines() if line.startswith("store:")]
    report.add()
    report.add(
        f"- pipeline `phasearray run quick --set engine.name={engine} "
        + " ".join(f"--set {item}" for item in overrides)
        + f"`: exit {code}, {seconds:.0f} s; {summary[-1] if summary else 'no summary line'}"
    )
    for png in sorted(figures.glob("*.png"))[:3]:
        shutil.copy2(png, report.out / png.name)


# --- main -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", type=Path, help="here: fill this folder to carry")
    parser.add_argument(
        "--carried", type=Path, help="there: the folder made by --prepare"
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="check this script without a GPU"
    )
    args = parser.parse_args(argv)
    if args.prepare is not None:
        prepare(args.prepare)
        return 0

    out = Path(os.environ.get("OUT", ".")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    deadline = time.perf_counter() + BUDGET
    environment = set_up(args.carried, report)
    label = "CPU smoke run, no GPU" if args.cpu_smoke else "H200"
    steps = [
        ("machine", lambda: describe_machine(report, args.carried, label)),
        ("tests", lambda: run_tests(report, environment)),
    ]
    if args.cpu_smoke:
        steps += [
            ("engines", lambda: measure_engines(report, ["numpy"], 1, deadline)),
            (
                "pipeline",
                lambda: run_pipeline(report, environment, "numpy", SMOKE_OVERRIDES),
            ),
        ]
    else:
        steps += [
            (
                "engines",
                lambda: measure_engines(report, ["cupy-fused", "cupy"], 100, deadline),
            ),
            ("kernel", lambda: measure_kernel_shape(report, 100)),
            ("peer", lambda: measure_peer(report, environment, 14400)),
            (
                "pipeline",
                lambda: run_pipeline(report, environment, "cupy-fused", OVERRIDES),
            ),
        ]
    for label, step in steps:
        # A step starts only if its own time limit still fits inside the run's.
        need = STEP_LIMITS.get(label, 0)
        if time.perf_counter() > deadline or report.elapsed() + need > HARD_LIMIT:
            report.add(f"- {label}: skipped, the {BUDGET} s budget is spent")
            continue
        try:
            step()
        except Exception as error:
            report.log(traceback.format_exc())
            report.add(f"- {label}: failed with {type(error).__name__}: {error}")
    report.add()
    report.add(f"(check took {report.elapsed():.0f} s)")
    print(json.dumps({"results": str(out / "gpu_results.md")}))
    return 0


# The pipeline run: the quick pipeline as shipped (1 152 models × 1e5 steps,
# store and figures), all models in one block.
OVERRIDES = ("engine.block_models=1152",)
SMOKE_OVERRIDES = (
    "grid.T=[0.125, 4.0]",
    "grid.sigma_W=[0.25, 64.0]",
    "grid.seeds=2",
    "train.steps=300",
    "data.n_train=400",
    "data.n_test=32",
    "record.checkpoints=[0, 10, 100, 300]",
    "engine.block_models=8",
)

if __name__ == "__main__":
    sys.exit(main())
