"""The ``phasearray`` command.

The CLI owns output: progress bars, messages and exit codes. Exit code 2 means
bad input (pipeline, arguments, store); nothing already stored is changed then.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli_analysis import default_figure_folder
from .config import ENGINES
from .errors import ConfigError, EngineUnavailableError, PhasearrayError, StoreError

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# Modules that add their own subcommands with ``register(subparsers)``.
_EXTENSIONS: tuple[str, ...] = ("phasearray.cli_analysis", "phasearray.cli_catalog")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``phasearray`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # The handler filters too: dask.distributed sets its loggers to INFO, and
    # their records reach this handler whatever the root logger's level.
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    if not args.verbose:
        # zarr's async reads leave pending tasks behind when a codec fails, and
        # distributed's event loop logs its own shutdown after Ctrl-C; the
        # error or the interruption itself is reported below
        for name in ("asyncio", "tornado.application"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.formatwarning = _one_line_warning
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except (ConfigError, StoreError, EngineUnavailableError) as error:
        print(f"phasearray: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PhasearrayError as error:
        print(f"phasearray: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:  # disk full, a file system gone read-only mid-run
        print(
            f"phasearray: error: {error}; completed checkpoints are kept, run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except Exception as error:
        if not _raised_by_a_codec(error):
            raise
        print(
            f"phasearray: error: a chunk of the store cannot be decoded "
            f"({type(error).__name__}: {error}); the store is damaged: "
            "'phasearray info --check STORE' names every such chunk",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "phasearray: interrupted; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def _raised_by_a_codec(error: BaseException) -> bool:
    """Whether ``error`` was raised inside a Zarr codec: a cut-off or altered chunk."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    where = "/" + frame.tb_frame.f_code.co_filename.replace("\\", "/")
    return "/numcodecs/" in where or "/zarr/codecs/" in where


def _one_line_warning(message: Any, category: Any, *_: Any, **__: Any) -> str:
    return f"phasearray: warning: {message}\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasearray",
        description="Map the phase diagram of SGD: run sweeps, inspect and plot stores.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_run(subparsers)
    _add_info(subparsers)
    for module_name in _EXTENSIONS:
        importlib.import_module(module_name).register(subparsers)
    return parser


# --- run --------------------------------------------------------------------------------


def _add_run(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="train a sweep into a Zarr store and write its figures",
        description="Train every model of PIPELINE into a store (resuming one that "
        "exists) and write the figures.",
    )
    run.add_argument(
        "pipeline",
        nargs="?",
        default=None,
        help="YAML file or shipped pipeline name (quick, paper); default quick",
    )
    run.add_argument(
        "--store", type=Path, help="store path; default ./runs/<name>.zarr"
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline field by dotted path, e.g. --set train.steps=2000",
    )
    run.add_argument(
        "--engine",
        choices=ENGINES,
        help="override engine.name (default: the pipeline's)",
    )
    run.add_argument(
        "--workers", type=int, help="start a dask LocalCluster with this many processes"
    )
    run.add_argument("--scheduler", help="address of a running dask scheduler to use")
    run.add_argument("--figures", type=Path, help="folder for the figures")
    run.add_argument("--no-figures", action="store_true", help="skip the figures")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .config import load_pipeline, variant_pipelines
    from .engines import get_engine, resolve_engine_name

    pipeline = load_pipeline(args.pipeline, args.overrides)
    _check_workers(args.workers)
    if args.workers is not None and args.scheduler is not None:
        raise ConfigError(
            "--workers and --scheduler exclude each other: --workers starts a "
            "local cluster, --scheduler joins a running one"
        )
    # The engine is settled before anything is created or claimed on disk.
    engines = {
        resolve_engine_name(
            args.engine or p.engine.name, p.model.trainable, p.engine_shape
        )
        for _, p in variant_pipelines(pipeline)
    }
    for name in engines:
        get_engine(name)
    if len(engines) == 1:
        args.engine = engines.pop()
    if pipeline.variants is not None:
        return _run_study(args, pipeline)

    # "runs/../x.zarr" names x.zarr even where runs/ does not exist
    store = Path(os.path.normpath(args.store or Path("runs") / f"{pipeline.name}.zarr"))
    figures = args.figures or default_figure_folder(store)
    if _complete(store, pipeline):
        print(f"store {store} is complete; nothing to train")
        if not args.no_figures and not figures.exists():
            _write_figures(store, figures)  # e.g. after --no-figures or a deletion
        return EXIT_OK
    with _client(args) as client:
        _train(args, pipeline, store, client)
    if not args.no_figures:
        _write_figures(store, figures)
    return EXIT_OK


# Worker processes per core that --workers accepts: each is a Python process
# of ~150 MB, and more than a few per core only wait for each other.
WORKERS_PER_CORE = 4


def _check_workers(workers: int | None) -> None:
    if workers is None:
        return
    cores = os.cpu_count() or 1
    most = WORKERS_PER_CORE * cores
    if not 1 <= workers <= most:
        raise ConfigError(
            f"--workers: got {workers}; must be between 1 and {most} "
            f"({WORKERS_PER_CORE} per core of the {cores} here; one per core is "
            "usual). For more machines, start a dask cluster and use --scheduler"
        )


def _complete(store: Path, pipeline: Any) -> bool:
    """Check an existing store belongs to the pipeline; say whether it is done."""
    from .store import check_same_pipeline, store_summary

    if store.exists() and not store.is_dir():
        raise StoreError(f"store {str(store)!r} is a file, not a Zarr store folder")
    if not store.exists():
        return False
    check_same_pipeline(store, pipeline)
    return bool(store_summary(store)["complete"])


def _train(args: argparse.Namespace, pipeline: Any, store: Path, client: Any) -> None:
    from .sweep import run_sweep

    with _ProgressBar(pipeline.name) as bar:
        result = run_sweep(
            pipeline,
            store,
            engine=args.engine,
            client=client,
            progress=bar.update,
            on_plan=bar.start,
        )
    rate = result.model_steps / max(result.seconds, 1e-9)
    print(
        f"store: {store} ({result.blocks_run} of {result.blocks_total} blocks run "
        f"with engine {result.engine}, {rate:.3g} model-steps/s)"
    )


def _run_study(args: argparse.Namespace, pipeline: Any) -> int:
    """Every variant of a study into ``<root>/<dim>=<label>.zarr``."""
    from .study import claim_study_folder, study_stores

    root = args.store or Path("runs") / pipeline.name
    claim_study_folder(root, pipeline)
    with _client(args) as client:
        for _, variant, store in study_stores(pipeline, root):
            if _complete(store, variant):
                print(f"store {store} is complete; nothing to train")
                continue
            _train(args, variant, store, client)
    if not args.no_figures:
        for _, _, store in study_stores(pipeline, root):
            _write_figures(store, default_figure_folder(store))
        _write_study_figures(root, default_figure_folder(root))
    print(f"study: {root} (open it with phasearray.open_study)")
    return EXIT_OK


class _client:
    """A dask.distributed client for --workers / --scheduler, else None."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cluster: Any = None
        self.client: Any = None

    def __enter__(self) -> Any:
        if self.args.workers is None and self.args.scheduler is None:
            return None
        from distributed import Client

        if self.args.scheduler is not None:
            self.client = _scheduler_client(self.args.scheduler)
        else:
            self.cluster = _local_cluster(self.args.workers, self.args.engine)
            self.client = Client(self.cluster)
        print(f"dask: {self.client}")
        return self.client

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# Seconds a scheduler has to answer: connecting and registering the client.
SCHEDULER_TIMEOUT = 10.0


def _scheduler_client(address: str) -> Any:
    """A client of the dask scheduler at ``address``, or a ConfigError.

    The client is made in a thread with a deadline: distributed's own timeout
    covers the TCP connection only, and a port that accepts but does not speak
    dask's protocol (a dashboard, a web server) would hang it for ever.
    """
    from distributed import Client

    made: dict[str, Any] = {}

    def connect() -> None:
        try:
            made["client"] = Client(address, timeout=f"{SCHEDULER_TIMEOUT}s")
        except Exception as error:  # every failure is reported below
            made["error"] = error

    thread = threading.Thread(target=connect, name="phasearray-connect", daemon=True)
    thread.start()
    thread.join(SCHEDULER_TIMEOUT + 2)
    if "client" in made:
        return made["client"]
    reason = made.get("error")
    why = (
        f"{type(reason).__name__}: {reason}"
        if reason is not None
        else f"no answer as a dask scheduler within {SCHEDULER_TIMEOUT:g} s"
    )
    raise ConfigError(
        f"--scheduler: cannot reach {address!r} ({why}); give the address a "
        "dask scheduler prints, e.g. tcp://host:8786"
    )


def _local_cluster(workers: int, engine: str | None) -> Any:
    """N worker processes; GPU engines get one dask-cuda worker per GPU instead."""
    from distributed import LocalCluster

    if engine in ("cupy", "cupy-fused"):
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise EngineUnavailableError(
                f"--workers with engine {engine!r} needs dask-cuda; install it or "
                "leave out --workers to use one GPU"
            ) from None
        return LocalCUDACluster(
            n_workers=workers, dashboard_address=None, silence_logs=logging.ERROR
        )

    # Each process gets its share of the cores for Numba's and BLAS's threads.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
    # Worker processes inherit an ignored SIGINT, so Ctrl-C reaches this process
    # alone: it stops the run and closes the cluster, with no worker tracebacks.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=env,
            silence_logs=logging.ERROR,  # the progress bar says what is happening
        )
    finally:
        signal.signal(signal.SIGINT, previous)


class _ProgressBar:
    """A tqdm bar over model-steps, with ETA."""

    def __init__(self, label: str = "training") -> None:
        self.label = label
        self.bar: Any = None

    def start(self, remaining: int, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=remaining,
            unit="model-step",
            unit_scale=True,
            dynamic_ncols=True,
            desc=self.label,
            file=sys.stderr,
        )

    def update(self, model_steps: int) -> None:
        if self.bar is not None:
            self.bar.update(model_steps)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_figures(store: Path, folder: Path) -> None:
    from .plots import write_figures
    from .plots.beyond import has_beyond_figures, write_beyond_figures
    from .store import open_sweep

    ds = open_sweep(store)
    paths = write_figures(ds, folder)
    if has_beyond_figures(ds):
        paths += write_beyond_figures(ds, folder)
    print(f"figures: {folder} ({len(paths)} files)")
    for path in paths:
        print(f"  {path}")


def _write_study_figures(root: Path, folder: Path) -> None:
    from .plots.beyond import write_beyond_figures

    paths = write_beyond_figures(root, folder)
    print(f"figures: {folder} ({len(paths)} files)")
    for path in paths:
        print(f"  {path}")


# --- info --------------------------------------------------------------------------


def _add_info(subparsers: Any) -> None:
    info = subparsers.add_parser("info", help="say what a store holds")
    info.add_argument("store", type=Path)
    info.add_argument(
        "--check",
        action="store_true",
        help="also read and decode every chunk (reads the whole store)",
    )
    info.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    from .store import damaged_chunks, store_summary

    if args.check and Path(args.store).is_dir():
        # decode first: the summary stops at the first damage it meets
        damaged = damaged_chunks(args.store)
        for key, reason in damaged:
            print(f"damaged      {key}: {reason}")
        print(f"chunks       {f'{len(damaged)} damaged' if damaged else 'all decode'}")
        if damaged:
            return EXIT_BAD_INPUT
    summary = store_summary(args.store)
    for line in _info_lines(summary):
        print(line)
    return EXIT_OK


def _info_lines(summary: dict[str, Any]) -> list[str]:
    p, attrs = summary["pipeline"], summary["attrs"]
    grid = p.grid
    done, n_t = summary["checkpoints_done"], summary["n_checkpoints"]
    lines = [
        f"store        {summary['path']}",
        f"pipeline     {p.name}: {p.description}".rstrip(": "),
        f"grid         {len(grid.T)} T in [{min(grid.T):g}, {max(grid.T):g}] x "
        f"{len(grid.sigma_W)} sigma_W in [{min(grid.sigma_W):g}, {max(grid.sigma_W):g}] x "
        f"{grid.seeds} seeds = {p.n_models} models",
        f"training     {p.train.steps} steps, batch {p.train.batch_size}, "
        f"{p.train.schedule}, {p.train.dtype}, {p.model.activation}",
        f"checkpoints  {n_t} (t = 0 … {p.train.steps})",
        f"engine       {', then '.join(attrs.get('engines', [attrs.get('engine')]))}"
        f"   created {attrs.get('created')}   "
        f"phasearray {attrs.get('phasearray_version')} ({attrs.get('git_revision', '')[:10]})",
        f"size         {summary['bytes'] / 2**20:.1f} MiB on disk",
        f"completion   {int((done == n_t).sum())} of {done.size} blocks complete"
        + ("" if summary["complete"] else " (run the same command again to resume)"),
    ]
    for block, n in zip(summary["blocks"], done, strict=True):
        region = ", ".join(f"{d}[{s.start}:{s.stop}]" for d, s in block.region.items())
        lines.append(f"  block {block.index:3d}  {region:40s} {n:3d}/{n_t} checkpoints")
    return lines


if __name__ == "__main__":
    sys.exit(main())
