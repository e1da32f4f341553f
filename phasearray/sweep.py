"""Running a sweep: blocks of models, locally or on a dask.distributed cluster.

Each block is one task. It rebuilds its ensemble from the seeds (counter-based,
so the same numbers on every worker), resumes from its last completed
checkpoint, advances W2 with the engine between checkpoints, computes the
observables and writes its own chunks of the store.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import lyapunov
from .checkpoint import checkpoint_observables, held_out_arrays, mark_diverged
from .config import Pipeline, parse_pipeline
from .engines import Engine, SGDProblem, get_engine, resolve_engine_name
from .ensemble import Ensemble, make_ensemble, sgd_problem, stream_key
from .errors import ConfigError, PhasearrayWarning
from .store import (
    Block,
    BlockWriter,
    check_integrity,
    check_same_pipeline,
    check_store_writable,
    completion,
    create_store,
    read_attrs,
    record_engine,
    stored_blocks,
)

__all__ = ["SweepResult", "run_block", "run_sweep"]

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did."""

    path: Path
    engine: str
    blocks_run: int
    blocks_total: int
    model_steps: int
    seconds: float


def run_sweep(
    pipeline: Pipeline,
    path: str | Path,
    *,
    engine: str | None = None,
    client: Any = None,
    progress: Progress | None = None,
    on_plan: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Train every model of a pipeline into a store, resuming what is done.

    Parameters
    ----------
    pipeline : Pipeline
    path : path
        The store; created if missing, continued if made from the same pipeline.
    engine : str, optional
        Overrides ``pipeline.engine.name``.
    client : dask.distributed.Client, optional
        Run blocks as tasks on this cluster; ``None`` runs them here.
    progress : callable, optional
        Called with the number of model-steps just finished.
    on_plan : callable, optional
        Called once with (model-steps still to run, model-steps in total).

    Raises
    ------
    StoreMismatchError
        The store exists but was made from another pipeline.
    """
    start = time.perf_counter()
    path = Path(path).absolute()  # dask workers may run in another folder
    engine_name = resolve_engine_name(
        engine or pipeline.engine.name, pipeline.model.trainable, pipeline.engine_shape
    )
    get_engine(engine_name)  # fail here, before a store is made, if unavailable
    check_memory(pipeline)
    _open_or_create(path, pipeline, engine_name)

    blocks = stored_blocks(path, pipeline)
    done = completion(path, blocks)
    steps_done = _steps_at(pipeline, done)
    total = pipeline.train.steps * pipeline.n_models
    remaining = sum(
        (pipeline.train.steps - s) * b.n_models
        for s, b in zip(steps_done, blocks, strict=True)
    )
    if on_plan is not None:
        on_plan(remaining, total)
    todo = [
        b for b, n in zip(blocks, done, strict=True) if n < pipeline.checkpoints.size
    ]
    logger.info(
        "%d of %d blocks to run with engine %s", len(todo), len(blocks), engine_name
    )
    if todo:
        check_store_writable(path)
        record_engine(path, engine_name)

    if client is None:
        for block in todo:
            run_block(path, pipeline.to_dict(), block, engine_name, progress)
    else:
        _run_distributed(client, path, pipeline, todo, engine_name, progress)

    seconds = time.perf_counter() - start
    return SweepResult(path, engine_name, len(todo), len(blocks), remaining, seconds)


def memory_needed(pipeline: Pipeline) -> int:
    """Bytes the largest arrays of a sweep take at once (an estimate).

    The inputs of every stream (a seed, or a cell and seed with fresh
    teachers), training and test sets, are made when the store is; a block
    then holds the first-layer features φ1 of its streams and a copy for the
    engine; the store's plan and the initial weights take a few copies of W2
    and a row of scalars per checkpoint for every model.
    """
    n0, n1, n2, _ = pipeline.model.widths
    cells = len(pipeline.grid.T) * len(pipeline.grid.sigma_W)
    streams = pipeline.grid.seeds * (cells if pipeline.grid.fresh_teachers else 1)
    block_streams = min(streams, pipeline.engine.block_models)
    data = pipeline.data
    inputs = streams * (data.n_train + data.n_test) * n0
    features = 2 * block_streams * data.n_train * n1
    models = pipeline.n_models * (4 * n1 * n2 + 16 * pipeline.checkpoints.size)
    return 8 * (inputs + features + models)


def check_memory(pipeline: Pipeline) -> None:
    """Refuse, before anything is written, a sweep that cannot fit in memory."""
    needed = memory_needed(pipeline)
    total = _physical_memory()
    if total is not None and needed > 0.8 * total:
        raise ConfigError(
            f"pipeline {pipeline.name!r} needs about {needed / 2**30:.3g} GiB for its "
            f"data sets, features and per-model arrays, more than this machine's "
            f"{total / 2**30:.3g} GiB allow; lower grid.seeds, data.n_train, "
            "model.widths or engine.block_models"
        )


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX: no check
        return None


def _open_or_create(path: Path, pipeline: Pipeline, engine_name: str) -> None:
    if path.exists():
        check_same_pipeline(path, pipeline)
        check_integrity(path, pipeline)
        _warn_engine_change(path, engine_name)
        return
    create_store(path, pipeline, _ensemble_arrays(pipeline), engine_name)


def _warn_engine_change(path: Path, engine_name: str) -> None:
    stored = read_attrs(path).get("engine")
    if stored != engine_name:
        warnings.warn(
            f"store {str(path)!r} was started with engine {stored!r}; continuing with "
            f"{engine_name!r}. Engines agree to round-off, which the hot phase "
            "amplifies: resume with the same engine for bit-identical results",
            PhasearrayWarning,
            stacklevel=4,
        )


def _steps_at(pipeline: Pipeline, checkpoints_done: np.ndarray) -> list[int]:
    t = pipeline.checkpoints
    return [int(t[n - 1]) if n > 0 else 0 for n in checkpoints_done]


def _run_distributed(
    client: Any,
    path: Path,
    pipeline: Pipeline,
    blocks: list[Block],
    engine_name: str,
    progress: Progress | None,
) -> None:
    """Blocks as tasks; workers report model-steps through a distributed Queue."""
    import uuid

    from distributed import Queue

    spec = pipeline.to_dict()
    queue_name = f"phasearray-progress-{uuid.uuid4().hex}"
    reporter = _QueueProgress(queue_name) if progress is not None else None
    futures = [
        client.submit(run_block, path, spec, block, engine_name, reporter, pure=False)
        for block in blocks
    ]
    queue = Queue(queue_name, client=client)
    while not all(future.done() for future in futures):
        time.sleep(0.25)
        _drain(queue, progress)
    for future in futures:
        future.result()  # re-raises a worker's error here
    _drain(queue, progress)


class _QueueProgress:
    """A picklable progress callback that forwards to a distributed Queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: Any = None

    def __call__(self, model_steps: int) -> None:
        if self._queue is None:
            from distributed import Queue

            self._queue = Queue(self.name)
        self._queue.put(int(model_steps))

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "_queue": None}


def _drain(queue: Any, progress: Progress | None) -> None:
    if progress is None:
        return
    for steps in queue.get(batch=True):
        progress(steps)


# --- one block --------------------------------------------------------------------


def run_block(
    path: str | Path,
    pipeline_spec: dict[str, Any],
    block: Block,
    engine_name: str,
    progress: Progress | None = None,
) -> int:
    """Train one block from its last completed checkpoint to the end.

    Returns the number of model-steps run. Safe to call on any worker: every
    input is rebuilt from the pipeline and the store.
    """
    pipeline = parse_pipeline(pipeline_spec)
    engine = get_engine(engine_name)
    writer = BlockWriter(path, block)
    checkpoints = pipeline.checkpoints
    n_done = int(np.cumprod(writer.completed()).sum())
    if n_done == checkpoints.size:
        return 0

    setup = _block_setup(pipeline, block)
    W2_initial = setup.W2_initial
    W2_start = (
        W2_initial if n_done == 0 else _flat(writer.read("resume_W2", n_done - 1))
    )
    test = held_out_arrays(
        engine,
        setup.ensemble.x_test,
        _teacher(setup.ensemble),
        W2_initial,
        setup.problem,
    )
    if pipeline.record.lyapunov:
        return _run_with_twins(
            pipeline, block, engine, writer, setup, test, n_done, progress
        )

    trained: dict[str, np.ndarray] = {
        name: _flat(writer.read(f"resume_{name}", n_done - 1))
        for name in pipeline.model.trainable
        if name != "W2" and n_done > 0
    }
    state = engine.start(setup.problem, W2_start, trained)
    model_steps = 0
    for k, t_previous, t_k in _segments(checkpoints, n_done):
        engine.advance(state, t_previous, t_k)
        mark_diverged(engine, state)
        values = checkpoint_observables(engine, state, test)
        writer.write_checkpoint(
            k, _unflatten(values, block.shape), bool(pipeline.W2_checkpoints[k])
        )
        model_steps += _report(progress, (t_k - t_previous) * block.n_models)
    return model_steps


def _segments(checkpoints: np.ndarray, n_done: int) -> list[tuple[int, int, int]]:
    """(k, t_{k-1}, t_k) for the checkpoints still to do."""
    t = [0, *checkpoints.tolist()]
    return [(k, t[k], t[k + 1]) for k in range(n_done, checkpoints.size)]


def _report(progress: Progress | None, model_steps: int) -> int:
    if progress is not None:
        progress(model_steps)
    return model_steps


def _teacher(e: Ensemble) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return e.teacher_W1, e.teacher_W2, e.teacher_W3


def _run_with_twins(
    pipeline: Pipeline,
    block: Block,
    engine: Engine,
    writer: BlockWriter,
    setup: _BlockSetup,
    test: dict[str, Any],
    n_done: int,
    progress: Progress | None,
) -> int:
    """The block loop with a twin per model for the Lyapunov exponent."""
    record = pipeline.record
    twins_0, _ = lyapunov.initial_twins(
        setup.W2_initial, setup.member_keys, record.lyapunov_perturbation
    )
    if n_done == 0:
        start = np.concatenate([setup.W2_initial, twins_0])
        log_growth = np.zeros(block.n_models)
    else:
        saved = [
            _flat(writer.read(name, n_done - 1))
            for name in ("resume_W2", "resume_twin")
        ]
        start = np.concatenate(saved)
        log_growth = (
            writer.read("lyapunov_log_growth", n_done - 1).ravel().astype(np.float64)
        )

    state = engine.start(lyapunov.twin_problem(setup.problem), start)
    base = lyapunov.base_view(state, setup.problem)
    model_steps = 0
    for k, t_previous, t_k in _segments(pipeline.checkpoints, n_done):
        lyapunov.advance_with_twins(
            engine,
            state,
            t_previous,
            t_k,
            record.lyapunov_interval,
            record.lyapunov_perturbation,
            log_growth,
        )
        mark_diverged(engine, state)
        values = checkpoint_observables(engine, base, test)
        values["lyapunov_log_growth"] = log_growth.copy()
        values["lyapunov"] = lyapunov.exponent(log_growth, t_k)
        values["twin_W2"] = engine.to_host(state.W2[block.n_models :]).copy()
        writer.write_checkpoint(
            k, _unflatten(values, block.shape), bool(pipeline.W2_checkpoints[k])
        )
        model_steps += _report(progress, 2 * (t_k - t_previous) * block.n_models)
    return model_steps


@dataclass(frozen=True)
class _BlockSetup:
    problem: SGDProblem
    ensemble: Ensemble
    W2_initial: np.ndarray
    member_keys: list[tuple[int, ...]]


def _block_setup(pipeline: Pipeline, block: Block) -> _BlockSetup:
    """Streams, members and the SGD problem of one block (host arrays)."""
    T_m, sigma_m, seed_m = _members(pipeline, block)
    member_keys = [
        stream_key(s, t, sw) for t, sw, s in zip(T_m, sigma_m, seed_m, strict=True)
    ]

    # Common random numbers: one stream per seed, unless teachers are per cell.
    if pipeline.grid.fresh_teachers:
        keys, member_stream = member_keys, np.arange(T_m.size)
    else:
        seeds, member_stream = np.unique(seed_m, return_inverse=True)
        keys = [stream_key(s) for s in seeds]

    data = pipeline.data
    ensemble = make_ensemble(
        keys, pipeline.model.widths, data.n_train, data.n_test, data.source
    )
    train = pipeline.train
    problem = sgd_problem(
        ensemble,
        member_stream,
        T_m * train.batch_size,
        batch_size=train.batch_size,
        schedule=train.schedule,
        activation=pipeline.model.activation,
        dtype=train.dtype,
        trainable=pipeline.model.trainable,
    )
    scale = sigma_m / np.sqrt(pipeline.model.widths[1])
    W2_initial = scale[:, None, None] * ensemble.W2_normal[member_stream]
    return _BlockSetup(
        problem, ensemble, W2_initial.astype(pipeline.train.dtype), member_keys
    )


def _members(
    pipeline: Pipeline, block: Block
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T, σ_W and seed of every member of a block, in (T, sigma_W, seed) C order."""
    grid = pipeline.grid
    T = np.asarray(grid.T)[block.slices[0]]
    sigma_W = np.asarray(grid.sigma_W)[block.slices[1]]
    seeds = pipeline.seeds[block.slices[2]]
    return tuple(a.ravel() for a in np.meshgrid(T, sigma_W, seeds, indexing="ij"))


def _ensemble_arrays(pipeline: Pipeline) -> dict[str, np.ndarray]:
    """Teachers and data sets of the whole grid, as stored."""
    grid = pipeline.grid
    if grid.fresh_teachers:
        cells = np.meshgrid(grid.T, grid.sigma_W, pipeline.seeds, indexing="ij")
        keys = [
            stream_key(s, t, sw)
            for t, sw, s in zip(*(c.ravel() for c in cells), strict=True)
        ]
        lead: tuple[int, ...] = cells[0].shape
    else:
        keys = [stream_key(s) for s in pipeline.seeds]
        lead = (len(keys),)
    ensemble = make_ensemble(
        keys,
        pipeline.model.widths,
        pipeline.data.n_train,
        pipeline.data.n_test,
        pipeline.data.source,
    )
    names = ("teacher_W1", "teacher_W2", "teacher_W3", "x_train", "x_test")
    return {
        n: getattr(ensemble, n).reshape(*lead, *getattr(ensemble, n).shape[1:])
        for n in names
    }


def _flat(array: np.ndarray) -> np.ndarray:
    """(T, sigma_W, seed, ...) block array to (member, ...)."""
    return array.reshape(-1, *array.shape[3:])


def _unflatten(
    values: dict[str, np.ndarray], shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    return {k: v.reshape(*shape, *v.shape[1:]) for k, v in values.items()}
