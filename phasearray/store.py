"""The Zarr v3 store of a sweep: schema, creation, region writes, opening.

The layout is described in ``docs/store.md``. The store is created once
through xarray (coordinates, attributes, the ensemble arrays and empty model
variables); blocks then write their own regions, each a whole number of
chunks, through zarr-python. Completion (``done``) is written after the data,
so an interrupted write is redone on resume and a diverged model still counts
as done.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import subprocess
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import yaml
import zarr

from .config import Pipeline, parse_pipeline
from .errors import ConfigError, StoreError, StoreMismatchError

__all__ = [
    "CHECKPOINT_VARS",
    "MODEL_DIMS",
    "SCHEMA_VERSION",
    "Block",
    "create_store",
    "open_sweep",
    "plan_blocks",
    "read_pipeline",
    "store_summary",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
MODEL_DIMS = ("T", "sigma_W", "seed")
_HIDDEN = ("resume_W1", "resume_W2", "resume_W3", "resume_twin")
# Weight matrices, kept only at the checkpoints that ``record.W2`` names.
WEIGHTS = ("W1", "W2", "W3")

# name: (extra dims after (T, sigma_W, seed, t), long_name, units)
CHECKPOINT_VARS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "W2": (("unit2", "unit1"), "student weights W2", "1"),
    "eigenvalues": (("eigen",), "eigenvalues of W2 W2ᵀ (ascending)", "1"),
    "train_loss": ((), "training loss ½⟨|y − ŷ|²⟩", "1"),
    "test_loss": ((), "test loss ½⟨|y − ŷ|²⟩", "1"),
    "grad_norm": ((), "Frobenius norm of the full-batch gradient ∇_W2 L", "1"),
    "feature_overlap": ((), "feature overlap G(t, 0)", "1"),
    "alignment": ((), "alignment cos(h, φ2)", "1"),
    "diverged": ((), "model held NaN or inf", "1"),
    "done": ((), "checkpoint written", "1"),
}
_BOOL_VARS = ("diverged", "done")

# Recorded only with ``record.lyapunov``.
_LYAPUNOV_VARS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "lyapunov": ((), "finite-time maximal Lyapunov exponent", "1/step"),
    "lyapunov_log_growth": ((), "running sum of log(d/d0) of the twin", "1"),
}


# Recorded only where ``model.trainable`` lists them.
_TRAINED_VARS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "W1": (("unit1", "unit0"), "student weights W1 (trained)", "1"),
    "W3": (("unit3", "unit2"), "student read-out W3 (trained)", "1"),
}


def _checkpoint_vars(pipeline: Pipeline) -> dict[str, tuple[tuple[str, ...], str, str]]:
    out = dict(CHECKPOINT_VARS)
    for name in pipeline.model.trainable:
        out |= {name: _TRAINED_VARS[name]} if name in _TRAINED_VARS else {}
    if pipeline.record.lyapunov:
        out |= _LYAPUNOV_VARS
    return out


def _resume_vars(pipeline: Pipeline) -> tuple[str, ...]:
    names = tuple(f"resume_{name}" for name in pipeline.model.trainable)
    return (*names, "resume_twin") if pipeline.record.lyapunov else names


def _resume_dims(name: str) -> tuple[str, str]:
    """The matrix dims of a resume slot."""
    return {
        "resume_W1": ("unit1", "unit0"),
        "resume_W3": ("unit3", "unit2"),
    }.get(name, ("unit2", "unit1"))


_ENSEMBLE_VARS: dict[str, tuple[tuple[str, ...], str]] = {
    "teacher_W1": (("unit1", "unit0"), "teacher weights W̄1"),
    "teacher_W2": (("unit2", "unit1"), "teacher weights W̄2"),
    "teacher_W3": (("unit3", "unit2"), "teacher (and student) read-out W3"),
    "x_train": (("sample", "unit0"), "training inputs x"),
    "x_test": (("test_sample", "unit0"), "test inputs x"),
}


# --- the plan: blocks of models ------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A hyper-rectangle of models that train together and own their chunks.

    Attributes
    ----------
    index : int
        Position in the plan.
    region : dict of str to slice
        Slices along ``T``, ``sigma_W`` and ``seed``.
    """

    index: int
    region: dict[str, slice]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.region.values())

    @property
    def n_models(self) -> int:
        return int(np.prod(self.shape))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(self.region[d] for d in MODEL_DIMS)  # type: ignore[return-value]


def block_shape(pipeline: Pipeline) -> tuple[int, int, int]:
    """Chunk of (T, sigma_W, seed) holding about ``engine.block_models`` models.

    Seeds are kept together first, then σ_W, then T, so a block shares few
    teachers and its chunks hold whole ensembles.
    """
    target = pipeline.engine.block_models
    n_T, n_sigma, n_seed = (
        len(pipeline.grid.T),
        len(pipeline.grid.sigma_W),
        pipeline.grid.seeds,
    )
    c_seed = min(n_seed, target)
    c_sigma = min(n_sigma, max(1, target // c_seed))
    c_T = min(n_T, max(1, target // (c_seed * c_sigma)))
    return c_T, c_sigma, c_seed


def plan_blocks(
    pipeline: Pipeline, shape: tuple[int, int, int] | None = None
) -> list[Block]:
    """Split the grid into blocks whose regions are whole chunks.

    Parameters
    ----------
    shape : (T, sigma_W, seed), optional
        The chunk shape of an existing store (its ``block_shape`` attribute),
        which wins over ``engine.block_models``: blocks must stay whole chunks
        whatever the pipeline asks for on resume.
    """
    sizes = (len(pipeline.grid.T), len(pipeline.grid.sigma_W), pipeline.grid.seeds)
    chunk = block_shape(pipeline) if shape is None else tuple(shape)
    starts = [range(0, n, c) for n, c in zip(sizes, chunk, strict=True)]
    blocks: list[Block] = []
    for i_T in starts[0]:
        for i_sigma in starts[1]:
            for i_seed in starts[2]:
                lows = (i_T, i_sigma, i_seed)
                region = {
                    dim: slice(low, min(low + c, n))
                    for dim, low, c, n in zip(
                        MODEL_DIMS, lows, chunk, sizes, strict=True
                    )
                }
                blocks.append(Block(index=len(blocks), region=region))
    return blocks


# --- creation ---------------------------------------------------------------------


def create_store(
    path: str | Path,
    pipeline: Pipeline,
    ensemble: Mapping[str, np.ndarray],
    engine: str,
) -> None:
    """Create the store: coordinates, attributes, ensemble arrays, empty variables.

    Parameters
    ----------
    path : path
        Must not exist yet.
    pipeline : Pipeline
    ensemble : mapping of str to array
        ``teacher_W1`` … ``x_test`` with dims (seed, …), or (T, sigma_W, seed, …)
        with fresh teachers per cell.
    engine : str
        Name of the engine that trains the models (recorded in the attributes).
    """
    path = Path(path)
    check_writable(path)
    template = _template(pipeline, ensemble, engine)
    encoding = _encoding(template, pipeline)

    # Built under a temporary name and renamed, so a store either exists
    # whole or not at all, even when the process is killed meanwhile.
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        template.to_zarr(
            partial,
            mode="w",
            compute=False,
            zarr_format=3,
            consolidated=False,
            encoding=encoding,
        )
        partial.rename(path)
    except (OSError, ValueError) as error:
        raise StoreError(f"cannot create store {str(path)!r}: {error}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("created store %s", path)


def check_writable(path: Path) -> None:
    if path.exists():
        raise StoreError(f"store {str(path)!r} already exists")
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create store {str(path)!r}: {error}") from None
    if not os.access(parent, os.W_OK):
        raise StoreError(
            f"cannot create store {str(path)!r}: folder {str(parent)!r} is not writable"
        )


def check_store_writable(path: Path) -> None:
    """Refuse to resume into a store any folder of which cannot be written.

    Checked before training, so a read-only store (a read-only mount, a
    ``chmod -R a-w``, an immutable folder) is left exactly as it was.
    """
    folders = [path, *(p for p in path.rglob("*") if p.is_dir())]
    locked = [f for f in folders if not os.access(f, os.W_OK)]
    if locked:
        raise StoreError(
            f"cannot resume store {str(path)!r}: folder {str(locked[0])!r} is not "
            f"writable ({len(locked)} of {len(folders)} folders); nothing was changed"
        )


def _template(
    pipeline: Pipeline, ensemble: Mapping[str, np.ndarray], engine: str
) -> xr.Dataset:
    coords = store_coords(pipeline)
    sizes = {name: len(coords[name][1]) for name in ("T", "sigma_W", "seed", "t")}
    n0, n1, n2, n3 = pipeline.model.widths
    sizes |= {"unit0": n0, "unit1": n1, "unit2": n2, "unit3": n3, "eigen": n2}
    chunk = dict(zip(MODEL_DIMS, block_shape(pipeline), strict=True))
    dtype = np.dtype(pipeline.train.dtype)

    variables: dict[str, xr.DataArray] = {}
    for name, (extra, long_name, units) in _checkpoint_vars(pipeline).items():
        dims = (*MODEL_DIMS, "t", *extra)
        var_dtype = np.dtype(bool) if name in _BOOL_VARS else dtype
        if name == "lyapunov_log_growth":
            var_dtype = np.dtype(np.float64)  # accumulated in float64; exact resume
        fill = False if name in _BOOL_VARS else np.nan
        shape = tuple(sizes[d] for d in dims)
        chunks = tuple(chunk.get(d, 1 if d == "t" else sizes[d]) for d in dims)
        data = da.full(shape, fill, dtype=var_dtype, chunks=chunks)
        variables[name] = xr.DataArray(
            data, dims=dims, attrs={"long_name": long_name, "units": units}
        )

    for name in _resume_vars(pipeline):
        resume_dims = ("slot", *MODEL_DIMS, *_resume_dims(name))
        resume_shape = (2, *(sizes[d] for d in resume_dims[1:]))
        resume_chunks = (1, *(chunk.get(d, sizes[d]) for d in resume_dims[1:]))
        variables[name] = xr.DataArray(
            da.full(resume_shape, np.nan, dtype=dtype, chunks=resume_chunks),
            dims=resume_dims,
            attrs={
                "long_name": f"{name[7:]} at the last two checkpoints, for exact resume",
                "units": "1",
            },
        )

    lead = MODEL_DIMS if pipeline.grid.fresh_teachers else ("seed",)
    for name, (extra, long_name) in _ENSEMBLE_VARS.items():
        variables[name] = xr.DataArray(
            np.asarray(ensemble[name], dtype=np.float64),
            dims=(*lead, *extra),
            attrs={"long_name": long_name, "units": "1"},
        )

    return xr.Dataset(variables, coords=coords, attrs=store_attrs(pipeline, engine))


def store_coords(pipeline: Pipeline) -> dict[str, Any]:
    T = np.asarray(pipeline.grid.T, dtype=np.float64)
    sigma_W = np.asarray(pipeline.grid.sigma_W, dtype=np.float64)
    t = pipeline.checkpoints
    return {
        "T": ("T", T, {"long_name": "temperature ε/|B|", "units": "1"}),
        "sigma_W": (
            "sigma_W",
            sigma_W,
            {"long_name": "initial weight scale σ_W", "units": "1"},
        ),
        "seed": ("seed", pipeline.seeds, {"long_name": "seed", "units": "1"}),
        "t": ("t", t, {"long_name": "SGD steps", "units": "steps"}),
        "learning_rate": (
            "T",
            T * pipeline.train.batch_size,
            {"long_name": "learning rate ε", "units": "1"},
        ),
        "inv_sigma_W": ("sigma_W", 1.0 / sigma_W, {"long_name": "1/σ_W", "units": "1"}),
        "epoch": (
            "t",
            t / pipeline.steps_per_epoch,
            {"long_name": "epochs", "units": "epochs"},
        ),
        "W2_recorded": (
            "t",
            pipeline.W2_checkpoints,
            {"long_name": "W2 kept at this checkpoint", "units": "1"},
        ),
    }


def store_attrs(pipeline: Pipeline, engine: str) -> dict[str, Any]:
    from . import __version__

    return {
        "title": f"phasearray sweep {pipeline.name!r}",
        "schema_version": SCHEMA_VERSION,
        "pipeline": pipeline.to_yaml(),
        "pipeline_fingerprint": pipeline.fingerprint(),
        "phasearray_version": __version__,
        "git_revision": _git_revision(),
        "engine": engine,
        "dtype": pipeline.train.dtype,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "activation": pipeline.model.activation,
        "schedule": pipeline.train.schedule,
        "batch_size": pipeline.train.batch_size,
        "steps": pipeline.train.steps,
        "steps_per_epoch": pipeline.steps_per_epoch,
        "n_train": pipeline.data.n_train,
        "n_test": pipeline.data.n_test,
        "widths": list(pipeline.model.widths),
        "fresh_teachers": int(pipeline.grid.fresh_teachers),
        "block_shape": list(block_shape(pipeline)),
    }


def _git_revision(module_file: str | Path = __file__) -> str:
    """The package's git commit when it runs from its own checkout, else "unknown".

    Only a repository that tracks this very file counts: a package installed
    into a virtualenv inside some other checkout records "unknown", not that
    checkout's commit.
    """
    folder = Path(module_file).resolve().parent
    tracked = _git(folder, "ls-files", "--error-unmatch", Path(module_file).name)
    if tracked is None:
        return "unknown"
    return _git(folder, "describe", "--always", "--dirty", "--abbrev=40") or "unknown"


def _git(folder: Path, *args: str) -> str | None:
    """Output of a git command run in ``folder``, or None where it fails."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _encoding(template: xr.Dataset, pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Chunks, fill values and compression of every stored variable.

    Floats go through Blosc/zstd with bit-shuffling: weights are noise-like,
    and shuffling the bits of their exponents saves ~10 % over plain zstd
    (measured on W2: 0.74 vs 0.83 of the raw size) at a cost that is small
    beside training.
    """
    from zarr.codecs import BloscCodec

    compressor = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
    encoding: dict[str, dict[str, Any]] = {}
    for name, variable in template.data_vars.items():
        if isinstance(variable.data, da.Array):
            chunks = tuple(c[0] for c in variable.data.chunks)
            fill = False if variable.dtype == bool else np.nan
            encoding[str(name)] = {"chunks": chunks, "fill_value": fill}
            if variable.dtype != bool:
                encoding[str(name)]["compressors"] = [compressor]
        elif name in _ENSEMBLE_VARS and pipeline.grid.fresh_teachers:
            lead = block_shape(pipeline)
            encoding[name] = {"chunks": (*lead, *variable.shape[3:])}
    return encoding


# --- opening and checking -------------------------------------------------------------


def open_sweep(path: str | Path, *, chunks: Any = None) -> xr.Dataset:
    """Open a sweep store as a Dask-backed :class:`xarray.Dataset`.

    Parameters
    ----------
    path : path
        A store made by ``phasearray run``.
    chunks : optional
        Dask chunks; by default the store's own chunks (one block, one
        checkpoint).

    Examples
    --------
    >>> ds = open_sweep("runs/quick.zarr")  # doctest: +SKIP
    >>> ds.test_loss.sel(t=ds.t[-1]).median("seed")  # doctest: +SKIP
    """
    location: Any = _existing(path)
    if Path(path).is_file():
        location = zarr.storage.ZipStore(path, mode="r")
    try:
        ds = _open_zarr(location, {} if chunks is None else chunks)
        # Small 1-D coordinates are read now, straight from Zarr and not
        # through Dask, so labels never need a compute.
        plain = _open_zarr(location, None)
        labels = {name: plain[name].load() for name in ds.coords if name not in ds.dims}
    except Exception as error:  # zipfile, zarr and xarray raise many kinds here
        raise StoreError(f"cannot open store {str(path)!r}: {error}") from None
    check_schema(ds.attrs, Path(path))
    ds = ds.drop_vars([v for v in _HIDDEN if v in ds.variables])
    return ds.assign_coords(labels)


def _open_zarr(location: Any, chunks: Any) -> xr.Dataset:
    return xr.open_zarr(location, chunks=chunks, consolidated=False, zarr_format=3)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {str(path)!r} does not exist")
    if path.is_file() and zipfile.is_zipfile(path):
        return path  # a store packed as one file by `phasearray publish`
    if not path.is_dir():
        raise StoreError(f"store {str(path)!r} is a file, not a Zarr store folder")
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{str(path)!r} is not a Zarr v3 store (no zarr.json)")
    return path


def check_schema(attrs: Mapping[str, Any], path: str | Path) -> None:
    """Refuse attributes that are not those of a store of this schema version."""
    version = attrs.get("schema_version")
    if version is None or "pipeline" not in attrs:
        raise StoreError(f"{str(path)!r} is not a phasearray store (no schema_version)")
    if version != SCHEMA_VERSION:
        raise StoreMismatchError(
            f"store {str(path)!r} has schema version {version!r}; this phasearray "
            f"reads version {SCHEMA_VERSION!r}"
        )


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Root attributes of a store, checked for the schema version."""
    path = _existing(path)
    location: Any = zarr.storage.ZipStore(path, mode="r") if path.is_file() else path
    try:
        attrs = dict(zarr.open_group(location, mode="r", zarr_format=3).attrs)
    except Exception as error:
        raise StoreError(f"cannot open store {str(path)!r}: {error}") from None
    check_schema(attrs, path)
    return attrs


def record_engine(path: str | Path, engine_name: str) -> list[str]:
    """Add an engine to the store's ``engines`` attribute, in order of first use.

    ``engine`` keeps the engine the store was started with; ``engines`` is
    written once a resume trains with another, so that a store trained by two
    engines says so. zarr writes the attributes file whole (to a temporary
    file, then renamed), so a crash here leaves the old one.

    Returns
    -------
    list of str
        Every engine that has trained in the store, first the one it started
        with.
    """
    attrs = read_attrs(path)
    engines = list(attrs.get("engines", [attrs.get("engine")]))
    if engine_name not in engines:
        engines.append(engine_name)
        group = zarr.open_group(Path(path), mode="r+", zarr_format=3)
        group.attrs.update({"engines": engines})
    return engines


def read_pipeline(path: str | Path) -> Pipeline:
    """The pipeline a store was made from."""
    text = read_attrs(path)["pipeline"]
    try:
        return parse_pipeline(yaml.safe_load(text))
    except ConfigError as error:
        raise StoreError(
            f"store {str(path)!r} holds an invalid pipeline: {error}"
        ) from None


def check_same_pipeline(path: str | Path, pipeline: Pipeline) -> None:
    """Refuse to continue a store made from another pipeline.

    Raises
    ------
    StoreMismatchError
        Naming the fields that differ.
    """
    attrs = read_attrs(path)
    if attrs.get("pipeline_fingerprint") == pipeline.fingerprint():
        return
    stored = yaml.safe_load(attrs["pipeline"])
    differences = _differences(stored, pipeline.to_dict())
    listing = "; ".join(
        f"{k}: {a!r} in the store, {b!r} asked" for k, a, b in differences[:6]
    )
    raise StoreMismatchError(
        f"store {str(path)!r} was made from another pipeline ({listing}); choose "
        "another --store or run the store's own pipeline"
    )


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key in ("name", "description", "engine") and not prefix:
                continue
            found += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return found
    return [] if a == b else [(prefix.rstrip("."), a, b)]


# --- block I/O (used by the sweep) ---------------------------------------------------


class BlockWriter:
    """Region reads and writes of one block, straight through zarr-python."""

    def __init__(self, path: str | Path, block: Block) -> None:
        # Chunks equal to the fill value (all NaN, all False) are still written:
        # a missing chunk then always means damage, never "nothing to store".
        try:
            with zarr.config.set({"array.write_empty_chunks": True}):
                self._group = zarr.open_group(Path(path), mode="r+", zarr_format=3)
        except Exception as error:
            raise StoreError(
                f"cannot open store {str(path)!r} for writing: {error}"
            ) from None
        self.block = block
        self._checked: dict[str, zarr.Array] = {}

    def _array(self, name: str) -> zarr.Array:
        if name not in self._checked:
            array = _array(self._group, name)
            _check_whole_chunks(name, array, self.block)
            self._checked[name] = array
        return self._checked[name]

    def completed(self) -> np.ndarray:
        """Per checkpoint: is every model of the block done? dims (t,)."""
        done = np.asarray(self._array("done")[(*self.block.slices, slice(None))])
        return np.asarray(done.reshape(-1, done.shape[-1]).all(axis=0))

    def read(self, name: str, k: int) -> np.ndarray:
        """The block's values of ``name`` at checkpoint ``k``, dims (T, sigma_W, seed, …).

        ``resume_*`` (W1, W2, W3, twin) are read from their slot ``k % 2``.
        """
        if name.startswith("resume_"):
            return np.asarray(self._array(name)[(k % 2, *self.block.slices)])
        return np.asarray(self._array(name)[(*self.block.slices, k)])

    def write_checkpoint(
        self, k: int, values: Mapping[str, np.ndarray], keep_W2: bool
    ) -> None:
        """Write one checkpoint's data, the resume slots, then mark it done.

        ``keep_W2`` says whether the weight matrices (W2, and W1 and W3 where
        they train) are kept at this checkpoint; the resume slots always are.
        """
        region = (*self.block.slices, slice(k, k + 1))
        slot = (k % 2, *self.block.slices)
        with zarr.config.set({"array.write_empty_chunks": True}):
            for name, array in values.items():
                if name == "twin_W2" or (name in WEIGHTS and not keep_W2):
                    continue
                self._array(name)[region] = array[:, :, :, None]
            for name in WEIGHTS:
                if name in values:
                    self._array(f"resume_{name}")[slot] = values[name]
            if "twin_W2" in values:
                self._array("resume_twin")[slot] = values["twin_W2"]
            done = np.ones((*self.block.shape, 1), dtype=bool)
            self._array("done")[region] = done


def _check_whole_chunks(name: str, array: zarr.Array, block: Block) -> None:
    """Refuse a write that would cover part of a chunk.

    A partial-chunk region written by two tasks at once loses one of them
    silently, so every region a block writes must be whole chunks: its
    (T, sigma_W, seed) slices start on chunk edges and span one chunk (or end
    at the array's edge), checkpoints are one chunk each, and trailing dims
    are not split.
    """
    lead = 1 if name.startswith("resume_") else 0  # the slot dim
    chunks = array.metadata.chunk_grid.chunk_shape  # type: ignore[attr-defined]
    shape = array.shape
    for axis, region in enumerate(block.slices, start=lead):
        start, stop, chunk = region.start, region.stop, chunks[axis]
        if start % chunk or (stop - start != chunk and stop != shape[axis]):
            raise StoreError(
                f"block {block.index} covers {start}:{stop} of {name!r} along "
                f"{MODEL_DIMS[axis - lead]}, not whole chunks of {chunk}; "
                "refusing a write that could lose data"
            )
    rest = range(lead + 3 + (0 if lead else 1), len(shape))
    if (lead == 0 and chunks[3] != 1) or any(chunks[i] != shape[i] for i in rest):
        raise StoreError(
            f"array {name!r} has chunks {tuple(chunks)}; a block's checkpoint must "
            "be whole chunks (one checkpoint per chunk, trailing dims unsplit)"
        )


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """A named array of a group (zarr types members as arrays or groups)."""
    member = group[name]
    if not isinstance(member, zarr.Array):
        raise StoreError(f"store member {name!r} is not an array")
    return member


def stored_blocks(path: str | Path, pipeline: Pipeline) -> list[Block]:
    """The blocks of an existing store, from the chunk shape it was made with."""
    return plan_blocks(pipeline, tuple(read_attrs(path)["block_shape"]))


def check_integrity(path: str | Path, pipeline: Pipeline) -> None:
    """Check that every chunk marked done is on disk and every array opens.

    Also checks the resume slot of every block that is partly done, so that a
    resume never starts from missing (NaN) weights.

    Raises
    ------
    StoreError
        Naming the first missing array or chunk; nothing is changed.
    """
    path = Path(path)
    if read_attrs(path).get("source_format"):
        return  # imported from another format: written whole, no resume state
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
    except Exception as error:
        raise StoreError(f"store {str(path)!r} is damaged: {error}") from None
    names = (*_checkpoint_vars(pipeline), *_resume_vars(pipeline), *_ENSEMBLE_VARS)
    arrays = {}
    for name in names:
        try:
            arrays[name] = _array(group, name)
        except Exception as error:  # missing or unreadable zarr.json
            raise StoreError(
                f"store {str(path)!r} is damaged: array {name!r} ({name}/zarr.json) "
                f"does not open: {error}"
            ) from None
    try:
        done = np.asarray(arrays["done"][:])
    except Exception as error:  # a codec fails on a cut-off or altered chunk
        bad = _damaged_chunks_of(path, "done", arrays["done"])
        where = f"chunk {bad[0][0]!r}" if bad else "the 'done' array"
        raise StoreError(
            f"store {str(path)!r} is damaged: {where} cannot be read "
            f"({type(error).__name__}: {error}); restore the store from a copy"
        ) from None

    present = {
        str(f.relative_to(path))
        for f in path.rglob("*")
        if f.is_file() and "/c/" in f.as_posix()
    }
    for name in _ENSEMBLE_VARS:
        _require_every_chunk(path, present, name, arrays[name])
    keep_W2 = pipeline.W2_checkpoints
    for block in stored_blocks(path, pipeline):
        per_t = np.asarray(done[block.slices].reshape(-1, done.shape[-1]).all(axis=0))
        n_done = int(np.cumprod(per_t).sum())
        if per_t[n_done:].any():
            _gap(path, block, pipeline.checkpoints, n_done)
        for k in np.flatnonzero(per_t):
            for name in _checkpoint_vars(pipeline):
                if name in WEIGHTS and not keep_W2[k]:
                    continue
                _require(
                    path,
                    present,
                    _chunk_key(name, arrays[name], block, int(k)),
                    block,
                    pipeline.checkpoints[k],
                )
        if 0 < n_done < per_t.size:
            for name in _resume_vars(pipeline):
                index = _resume_index(arrays[name], block, (n_done - 1) % 2)
                key = _key(name, index)
                _require(path, present, key, block, pipeline.checkpoints[n_done - 1])
                _require_decodable(path, arrays[name], index, block)


def _gap(path: Path, block: Block, t: np.ndarray, n_done: int) -> None:
    """A checkpoint marked done after one that is not: the done mask is damaged.

    Checkpoints complete in order, so resuming from such a mask would restart
    from the wrong resume slot and overwrite good data.
    """
    raise StoreError(
        f"store {str(path)!r} is damaged: block {block.index} is marked done at a "
        f"later checkpoint but not at t = {int(t[n_done])} (a chunk of 'done' is "
        "missing or altered); restore the store from a copy or start a new one"
    )


def _require_every_chunk(path: Path, present: set[str], name: str, array: Any) -> None:
    """Arrays written whole at creation (teachers, data sets) have every chunk."""
    chunks = array.metadata.chunk_grid.chunk_shape
    counts = [-(-n // c) for n, c in zip(array.shape, chunks, strict=True)]
    for index in np.ndindex(*counts):
        key = _key(name, index)
        if key not in present:
            raise StoreError(
                f"store {str(path)!r} is damaged: chunk {key!r} of {name!r} (written "
                "when the store was made) is missing; restore the store from a copy "
                "or start a new one"
            )


def _require_decodable(
    path: Path, array: Any, index: Sequence[int], block: Block
) -> None:
    """Read a resume slot's chunk whole: a truncated file fails here, not mid-run."""
    key = _key(array.basename, index)
    try:
        array[_chunk_region(array, index)]
    except Exception as error:  # codecs raise their own kinds on a cut-off chunk
        raise StoreError(
            f"store {str(path)!r} is damaged: chunk {key!r} (the resume state of "
            f"block {block.index}) cannot be read ({type(error).__name__}: {error}); "
            "restore the store from a copy or start a new one"
        ) from None


def _require(path: Path, present: set[str], key: str, block: Block, t: int) -> None:
    if key not in present:
        raise StoreError(
            f"store {str(path)!r} is damaged: chunk {key!r} of a completed "
            f"checkpoint (block {block.index}, t = {t}) is missing; restore the "
            "store from a copy or start a new one"
        )


def _resume_index(array: Any, block: Block, slot: int) -> list[int]:
    """Chunk-grid position of a block's resume slot (dims slot, T, sigma_W, seed, …)."""
    chunks = array.metadata.chunk_grid.chunk_shape
    index = [slot] + [
        s.start // c for s, c in zip(block.slices, chunks[1:4], strict=True)
    ]
    return index + [0] * (array.ndim - 4)


def _chunk_key(name: str, array: Any, block: Block, k: int) -> str:
    """Path of a block's chunk at checkpoint k, for the default key encoding."""
    chunks = array.metadata.chunk_grid.chunk_shape
    index = [s.start // c for s, c in zip(block.slices, chunks[:3], strict=True)]
    return _key(name, index + [k] + [0] * (array.ndim - 4))


def _key(name: str, index: Sequence[int]) -> str:
    """The store path of chunk ``index`` of array ``name`` (default key encoding)."""
    return "/".join([name, "c", *map(str, index)])


def check_sound(path: str | Path, *, decode: bool = False) -> None:
    """Refuse a damaged store before it is analysed or published.

    Every chunk of a completed checkpoint and of the data sets must be on disk
    (a missing one would read as NaN); with ``decode`` every stored chunk must
    also decode (reads the whole store). Stores not made by ``phasearray
    run`` (imported, synthetic, written by other tools: no resume state) are
    only decoded.

    Raises
    ------
    StoreError
        Naming the first missing chunk, or every chunk that does not decode.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return  # not a store folder: opening it says so
    if (path / "resume_W2").is_dir():
        check_integrity(path, read_pipeline(path))
    if not decode:
        return
    damaged = damaged_chunks(path)
    if damaged:
        listed = "; ".join(f"{key} ({reason})" for key, reason in damaged[:5])
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        raise StoreError(
            f"store {str(path)!r} is damaged: {len(damaged)} chunks do not decode: "
            f"{listed}{more}; restore the store from a copy"
        )


def damaged_chunks(path: str | Path) -> list[tuple[str, str]]:
    """Every stored chunk that cannot be read and decoded, with the reason.

    Reads the whole store, one chunk at a time.

    Returns
    -------
    list of (str, str)
        Chunk key (``name/c/i/j/…``) and the decoder's message; empty for a
        sound store.
    """
    path = Path(path)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    damaged = []
    for meta in sorted(path.glob("*/zarr.json")):
        name = meta.parent.name
        try:
            array = _array(group, name)
        except Exception as error:  # an unreadable zarr.json
            damaged.append((f"{name}/zarr.json", f"{type(error).__name__}: {error}"))
            continue
        damaged += _damaged_chunks_of(path, name, array)
    return damaged


def _damaged_chunks_of(path: Path, name: str, array: Any) -> list[tuple[str, str]]:
    damaged = []
    for file in sorted((path / name / "c").rglob("*")):
        if not file.is_file():
            continue
        index = [int(i) for i in file.relative_to(path / name / "c").parts]
        try:
            array[_chunk_region(array, index)]
        except Exception as error:  # each codec fails in its own way
            damaged.append((_key(name, index), f"{type(error).__name__}: {error}"))
    return damaged


def _chunk_region(array: Any, index: Sequence[int]) -> tuple[slice, ...]:
    """The array region of the chunk at grid position ``index``."""
    chunks = array.metadata.chunk_grid.chunk_shape
    return tuple(
        slice(i * c, min((i + 1) * c, n))
        for i, c, n in zip(index, chunks, array.shape, strict=True)
    )


def completion(path: str | Path, blocks: list[Block]) -> np.ndarray:
    """Checkpoints done per block, dims (block,), counting from 0."""
    group = zarr.open_group(Path(path), mode="r", zarr_format=3)
    done = np.asarray(_array(group, "done")[:])
    counts = []
    for block in blocks:
        per_t = done[block.slices].reshape(-1, done.shape[-1]).all(axis=0)
        counts.append(int(np.cumprod(per_t).sum()))
    return np.asarray(counts)


def store_summary(path: str | Path) -> dict[str, Any]:
    """What a store holds: pipeline, grid, completion per block, size on disk."""
    if Path(path).is_file() and zipfile.is_zipfile(path):
        raise StoreError(
            f"{str(path)!r} is a zipped store (as in a published bundle): it is "
            "complete by construction; open it with phasearray.open_sweep, or "
            "unzip it for phasearray info"
        )
    attrs = read_attrs(path)
    pipeline = read_pipeline(path)
    check_integrity(path, pipeline)
    blocks = stored_blocks(path, pipeline)
    done = completion(path, blocks)
    n_checkpoints = pipeline.checkpoints.size
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {
        "path": str(path),
        "pipeline": pipeline,
        "attrs": attrs,
        "blocks": blocks,
        "checkpoints_done": done,
        "n_checkpoints": n_checkpoints,
        "complete": bool(np.all(done == n_checkpoints)),
        "bytes": size,
    }
