"""Importers: trajectories written by other codes, converted to phasearray stores.

``phase_ml`` is the release format of Park, Lucini and Aarts (2025): one
``data.npz`` per (learning rate, batch size, σ_W) cell, in a folder named
``r{r}K{K}_{activation}_lr{lr}_bs{bs}_eps{σ_W}``. Its only member ``arr_0``
is a NumPy object array wrapping a pickled dict:

- ``W``, dims (seed, snapshot, n2, n1): student W2, snapshot 0 the initial one;
- ``dW``, dims (seed, snapshot, n2, n1): gradient ∇_W2 L (see below);
- ``loss``, dims (seed, snapshot): loss ½⟨|y − ŷ|²⟩ (see below);
- ``Wt``, dims (seed, n2, n1): teacher W̄2;
- ``M``, dims (seed, n1, n0): teacher W̄1, also the student's (frozen);
- ``Z``, dims (seed, n3, n2): teacher W3, also the student's (frozen).

What the format holds differently from a phasearray store, and how the import
maps it:

- Snapshot 0 holds the loss and gradient over the whole training set; every
  later snapshot holds their *mean over the minibatches of the epoch* that
  ends at the snapshot. They go to ``train_loss``, ``grad_norm`` (Frobenius
  norm) and ``epoch_grad_W2``; each variable's ``long_name`` says so.
- With 20 or fewer epochs, snapshot k is taken after k epochs. With more, the
  authors' script keeps 21 snapshots, k ≥ 1 after (k − 1)·(epochs/20) + 1
  epochs, so the last one is not at the end of training; the number of epochs
  must then be given. An epoch is 1000 minibatches, so |D| = 1000 |B|.
- A run whose minibatch loss exceeded 100 was stopped; its later snapshots
  repeat the last weights and keep the loss 100. Those checkpoints are
  ``diverged`` and their values NaN.
- Each cell drew its own teachers (``fresh_teachers``), from an unseeded
  generator: ``seed`` is only the member's position.
- Absent: the training and test inputs, hence ``test_loss``,
  ``feature_overlap``, ``alignment``, ``x_train`` and ``x_test``.
  The pipeline stored in the attributes records ``data.n_test`` = 128, the
  authors' notebook value, but no test set exists.

Security: the file holds a pickle, and unpickling runs whatever the file
names. It is therefore read with an unpickler that accepts only the few
NumPy reconstructors that plain arrays need and refuses anything else before
it is called; ``numpy.load(allow_pickle=True)`` is never used.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import numpy.lib.format as npy_format
import xarray as xr

from . import observables
from .catalog import sha256_file
from .config import Pipeline, parse_pipeline
from .errors import ConfigError, StoreError, UnsafePickleError
from .store import MODEL_DIMS, check_writable, store_attrs, store_coords

__all__ = [
    "PHASE_ML_BATCHES_PER_EPOCH",
    "PhaseMLCell",
    "UnsafePickleError",
    "import_phase_ml",
    "phase_ml_hyperparameters",
    "read_phase_ml",
    "safe_unpickle",
]

logger = logging.getLogger(__name__)

PHASE_ML_BATCHES_PER_EPOCH = 1000
PHASE_ML_KEYS = ("W", "dW", "loss", "Wt", "M", "Z")
_MAX_SNAPSHOTS = 21
_DIVERGED_LOSS = 100.0
_NOTEBOOK_N_TEST = 128
# Largest unpacked arr_0 accepted (a whole cell of the authors' study is ~30 MB).
MAX_MEMBER_BYTES = 2**31

# ``…_lr{lr}_bs{bs}_eps{σ_W}`` at the end of a name, whatever comes before it
# (the authors' script writes ``r{r}K{K}_{activation}_`` there).
_HYPERPARAMETERS = re.compile(
    r"(?:^|_)lr(?P<lr>[0-9.eE+-]+)_bs(?P<bs>[0-9.eE+-]+)_eps(?P<eps>[0-9.eE+-]+)$"
)
_ACTIVATION = re.compile(r"(?:^|_)(?P<activation>tanh|relu|identity)(?:_|$)")

# Everything a pickle of plain (possibly object-dtype) NumPy arrays in dicts
# and lists may name. Dicts, lists, tuples, strings and numbers need no global.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


# --- safe reading ------------------------------------------------------------------


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self._source}: the pickle asks for {module}.{name}, which plain "
                "NumPy arrays never need; refusing to load it. Only "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS))} "
                "are allowed"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._source}: the pickle holds a persistent id, which plain NumPy "
            "arrays never need; refusing to load it"
        )


def safe_unpickle(data: bytes, source: str = "pickle") -> Any:
    """Unpickle ``data`` allowing only what plain NumPy arrays need.

    Parameters
    ----------
    data : bytes
        A pickle stream.
    source : str
        Named in error messages.

    Raises
    ------
    UnsafePickleError
        The stream names any other global, before that global is looked up.

    Examples
    --------
    >>> safe_unpickle(pickle.dumps({"a": np.arange(3)}))["a"]
    array([0, 1, 2])
    """
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # a corrupt stream raises many kinds
        raise StoreError(f"{source}: not a readable pickle ({error})") from None


def read_phase_ml(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of one file in the authors' release format, read safely.

    Parameters
    ----------
    path : path
        A ``data.npz`` whose ``arr_0`` wraps a pickled dict.

    Returns
    -------
    dict of str to numpy.ndarray, float64
        ``W``, ``dW`` with dims (seed, snapshot, n2, n1); ``loss`` (seed,
        snapshot); ``Wt`` (seed, n2, n1); ``M`` (seed, n1, n0); ``Z``
        (seed, n3, n2).

    Raises
    ------
    UnsafePickleError
        The file's pickle names anything but NumPy's array reconstructors.
    StoreError
        The file is missing, not an ``.npz``, or its arrays do not fit.
    """
    path = Path(path)
    content = _npz_member(path, "arr_0.npy")
    wrapped = _read_npy(content, f"{path}:arr_0")
    return _check_phase_ml_dict(_unwrap(wrapped, path), path)


def _npz_member(path: Path, member: str) -> bytes:
    if not path.is_file():
        raise StoreError(f"release file {str(path)!r} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if member not in names:
                raise StoreError(
                    f"{str(path)!r} has no {member!r} (members: {names}); the "
                    "phase_ml release format keeps its dict in arr_0"
                )
            size = archive.getinfo(member).file_size
            if size > MAX_MEMBER_BYTES:
                raise StoreError(
                    f"{str(path)!r}: {member} unpacks to {size} bytes, more than the "
                    f"{MAX_MEMBER_BYTES} a release file of 100 seeds × 21 snapshots "
                    "needs; refusing to read it"
                )
            # zipfile stops at the declared size, so this bounds the memory used.
            return archive.read(member)
    except zipfile.BadZipFile:
        raise StoreError(f"{str(path)!r} is not an .npz (zip) file") from None


_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}


def _read_npy(content: bytes, source: str) -> Any:
    """An array from ``.npy`` bytes; object arrays through the safe unpickler."""
    stream = io.BytesIO(content)
    try:
        version = npy_format.read_magic(stream)
        header = _HEADER_READERS.get(version)
        if header is None:
            raise ValueError(f"format version {version} is not supported")
        shape, fortran, dtype = header(stream)
    except ValueError as error:
        raise StoreError(f"{source}: not a .npy array ({error})") from None
    if dtype.hasobject:
        return safe_unpickle(stream.read(), source)
    count = int(np.prod(shape))
    values = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
    if values.size != count:
        raise StoreError(f"{source}: truncated array, {values.size} of {count} values")
    return values.reshape(shape, order="F" if fortran else "C")


def _unwrap(wrapped: Any, path: Path) -> Mapping[str, Any]:
    if (
        isinstance(wrapped, np.ndarray)
        and wrapped.dtype == object
        and wrapped.ndim == 0
    ):
        wrapped = wrapped.item()
    if not isinstance(wrapped, Mapping):
        raise StoreError(
            f"{str(path)!r}: arr_0 holds {type(wrapped).__name__}, not the dict of "
            "the phase_ml release format"
        )
    return wrapped


def _check_phase_ml_dict(raw: Mapping[str, Any], path: Path) -> dict[str, np.ndarray]:
    missing = [key for key in PHASE_ML_KEYS if key not in raw]
    if missing:
        raise StoreError(
            f"{str(path)!r}: the release dict lacks {missing}; it must hold "
            f"{list(PHASE_ML_KEYS)}"
        )
    arrays = {}
    for key in PHASE_ML_KEYS:
        value = raw[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise StoreError(
                f"{str(path)!r}: {key!r} must be a numeric array, got "
                f"{getattr(value, 'dtype', type(value).__name__)}"
            )
        arrays[key] = np.asarray(value, dtype=np.float64)
    _check_shapes(arrays, path)
    return arrays


def _check_shapes(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    n_seed, n_snap, n2, n1 = _dims_of(arrays["W"], 4, "W", path)
    n0 = arrays["M"].shape[-1] if arrays["M"].ndim == 3 else -1
    n3 = arrays["Z"].shape[1] if arrays["Z"].ndim == 3 else -1
    expected = {
        "dW": (n_seed, n_snap, n2, n1),
        "loss": (n_seed, n_snap),
        "Wt": (n_seed, n2, n1),
        "M": (n_seed, n1, n0),
        "Z": (n_seed, n3, n2),
    }
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise StoreError(
                f"{str(path)!r}: {key!r} has shape {arrays[key].shape}; with W of "
                f"shape {arrays['W'].shape} it must be {shape}"
            )
    if not 1 < n_snap <= _MAX_SNAPSHOTS:
        raise StoreError(
            f"{str(path)!r}: W holds {n_snap} snapshots; the release format holds "
            f"2 to {_MAX_SNAPSHOTS}"
        )


def _dims_of(array: np.ndarray, ndim: int, key: str, path: Path) -> tuple[int, ...]:
    if array.ndim != ndim:
        raise StoreError(
            f"{str(path)!r}: {key!r} has {array.ndim} dims {array.shape}, needs {ndim}"
        )
    return array.shape


# --- hyperparameters ---------------------------------------------------------------


@dataclass(frozen=True)
class PhaseMLCell:
    """One release file and the hyperparameters of its grid cell."""

    path: Path
    learning_rate: float
    batch_size: int
    sigma_W: float
    activation: str

    @property
    def T(self) -> float:
        """Temperature ε/|B|."""
        return self.learning_rate / self.batch_size


def phase_ml_hyperparameters(path: str | Path) -> dict[str, Any]:
    """Hyperparameters spelled in the folder name of a release file.

    Parameters
    ----------
    path : path
        ``…/r2K16_tanh_lr0.5_bs4_eps0.5/data.npz`` or any folder name ending
        in ``_lr{lr}_bs{bs}_eps{σ_W}``; the folder (or the file name without
        suffix) is matched.

    Returns
    -------
    dict
        ``learning_rate``, ``batch_size``, ``sigma_W`` and, where the name
        spells one of tanh, relu, identity before them, ``activation``; empty
        when neither name ends in ``lr{lr}_bs{bs}_eps{σ_W}``.

    Examples
    --------
    >>> phase_ml_hyperparameters("r2K16_tanh_lr0.5_bs4_eps0.25/data.npz")["sigma_W"]
    0.25
    """
    path = Path(path)
    for name in (path.parent.name, path.stem):
        match = _HYPERPARAMETERS.search(name)
        if match:
            found: dict[str, Any] = {
                "learning_rate": _number(match["lr"], "lr", path),
                "batch_size": _batch_size(match["bs"], path),
                "sigma_W": _number(match["eps"], "eps", path),
            }
            activation = _ACTIVATION.search(name[: match.start()])
            if activation:
                found["activation"] = activation["activation"]
            return found
    return {}


def _number(text: str, field: str, path: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{str(path)!r}: {field} {text!r} is not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"{str(path)!r}: {field} must be positive, got {text!r}")
    return value


def _batch_size(text: str, path: Path) -> int:
    value = _number(text, "bs", path)
    if value != int(value):
        raise ConfigError(f"{str(path)!r}: bs must be a whole number, got {text!r}")
    return int(value)


def _resolve_cell(path: Path, given: Mapping[str, Any]) -> PhaseMLCell:
    found = phase_ml_hyperparameters(path)
    values = dict(found)
    for key, value in given.items():
        if value is None:
            continue
        if key in found and found[key] != value:
            raise ConfigError(
                f"{str(path)!r}: {key} is {found[key]!r} in the folder name "
                f"but {value!r} was given"
            )
        values[key] = value
    lacking = [k for k in ("learning_rate", "batch_size", "sigma_W") if k not in values]
    if lacking:
        raise ConfigError(
            f"{str(path)!r}: its name does not spell {', '.join(lacking)} (expected a "
            "folder like r2K16_tanh_lr0.5_bs4_eps0.5); give them as "
            "learning_rate=, batch_size=, sigma_W= (--lr, --bs, --sigma-W)"
        )
    return PhaseMLCell(
        path=path,
        learning_rate=float(values["learning_rate"]),
        batch_size=int(values["batch_size"]),
        sigma_W=float(values["sigma_W"]),
        activation=str(values.get("activation", "tanh")),
    )


def snapshot_epochs(n_snapshots: int, epochs: int | None) -> np.ndarray:
    """Epochs at which the authors' script kept snapshots 0 … n_snapshots − 1.

    Parameters
    ----------
    n_snapshots : int
        Snapshots in the file, 2 to 21.
    epochs : int, optional
        Epochs the run trained; needed when the file holds 21 snapshots.

    Returns
    -------
    numpy.ndarray, dims (snapshot,), int64
        0, then (k − 1)·(epochs // (n_snapshots − 1)) + 1 for k ≥ 1.

    Examples
    --------
    >>> snapshot_epochs(4, None).tolist()
    [0, 1, 2, 3]
    >>> snapshot_epochs(21, 100_000)[[1, 2, 20]].tolist()
    [1, 5001, 95001]
    """
    saves = n_snapshots - 1
    if saves < _MAX_SNAPSHOTS - 1:
        if epochs is not None and epochs != saves:
            raise ConfigError(
                f"epochs={epochs} disagrees with the file: {n_snapshots} snapshots "
                f"come from a run of {saves} epochs"
            )
        epochs = saves
    elif epochs is None or epochs < saves or epochs % saves:
        raise ConfigError(
            f"epochs={epochs!r}: a file with {n_snapshots} snapshots comes from a run "
            f"of {saves} or more epochs; give that number (a multiple of {saves}, "
            "e.g. --epochs 100000)"
        )
    interval = epochs // saves
    later = (np.arange(1, n_snapshots, dtype=np.int64) - 1) * interval + 1
    return np.concatenate([[0], later]).astype(np.int64)


# --- the import --------------------------------------------------------------------


def import_phase_ml(
    files: str | Path | Iterable[str | Path],
    store: str | Path,
    *,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    sigma_W: float | None = None,
    activation: str | None = None,
    epochs: int | None = None,
) -> Path:
    """Convert files of the authors' release format into one phasearray store.

    Every file is one (T, σ_W) cell; together they span the store's grid
    (cells no file covers stay NaN with ``done`` false). Files are read twice:
    once to check them all, so a refused file leaves no store behind, once to
    write.

    Parameters
    ----------
    files : path or iterable of paths
        ``data.npz`` files of the release.
    store : path
        The Zarr v3 store to create; must not exist.
    learning_rate, batch_size, sigma_W : optional
        ε, |B| and σ_W for files whose folder name does not spell them. A
        value given here must agree with the folder name where it has one.
    activation : str, optional
        Hidden-layer activation when the name does not spell it; default tanh.
    epochs : int, optional
        Epochs each run trained; needed only for files with 21 snapshots.

    Returns
    -------
    pathlib.Path
        The store, to open with :func:`phasearray.open_sweep`.

    Raises
    ------
    UnsafePickleError
        A file's pickle names something other than plain NumPy arrays.
    ConfigError
        Hyperparameters are missing, contradictory or repeated.
    StoreError
        A file cannot be read or does not fit the others, or the store
        already exists.

    Examples
    --------
    >>> import_phase_ml("r2K16_tanh_lr0.5_bs4_eps0.5/data.npz", "cell.zarr")  # doctest: +SKIP
    """
    paths = _as_paths(files)
    store = Path(store)
    given = {
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "sigma_W": sigma_W,
        "activation": activation,
    }
    cells = [_resolve_cell(path, given) for path in paths]

    # First pass: read and check everything before anything is written.
    shapes = {cell.path: _shape_of(read_phase_ml(cell.path)) for cell in cells}
    pipeline = _import_pipeline(cells, shapes, epochs)
    check_writable(store)

    # Written under a temporary name and renamed at the end, so the store
    # exists whole or not at all.
    template = _template(pipeline, cells)
    partial = store.with_name(f".{store.name}.partial-{os.getpid()}")
    try:
        _create(partial, template, store)
        for cell in cells:
            _write_cell(partial, template, cell, read_phase_ml(cell.path))
            logger.debug(
                "imported %s: T=%g sigma_W=%g", cell.path, cell.T, cell.sigma_W
            )
        partial.rename(store)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("imported %d release files into %s", len(cells), store)
    return store


def _as_paths(files: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(files, str | Path):
        files = [files]
    paths = [Path(f) for f in files]
    if not paths:
        raise ConfigError("files: got none; give at least one release data.npz")
    return paths


def _shape_of(arrays: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    n_seed, n_snap, n2, n1 = arrays["W"].shape
    return n_seed, n_snap, arrays["M"].shape[-1], n1, n2, arrays["Z"].shape[1]


def _import_pipeline(
    cells: Sequence[PhaseMLCell],
    shapes: Mapping[Path, tuple[int, ...]],
    epochs: int | None,
) -> Pipeline:
    """The pipeline that describes the imported runs (authors' protocol)."""
    first = cells[0]
    _same_for_all(cells, shapes)
    n_seed, n_snap, n0, n1, n2, n3 = shapes[first.path]
    steps = snapshot_epochs(n_snap, epochs) * PHASE_ML_BATCHES_PER_EPOCH
    grid = {
        "T": sorted({cell.T for cell in cells}),
        "sigma_W": sorted({cell.sigma_W for cell in cells}),
        "seeds": n_seed,
        "fresh_teachers": True,
    }
    raw = {
        "name": "phase_ml-import",
        "description": "Runs of the authors' script (phase_ml release format), "
        "imported; see phasearray.importers for what the format lacks.",
        "model": {"widths": [n0, n1, n2, n3], "activation": first.activation},
        "data": {
            "n_train": first.batch_size * PHASE_ML_BATCHES_PER_EPOCH,
            "n_test": _NOTEBOOK_N_TEST,
        },
        "grid": grid,
        "train": {
            "batch_size": first.batch_size,
            "steps": int(steps[-1]),
            "schedule": "sequential",
            "dtype": "float64",
        },
        "record": {"checkpoints": [int(s) for s in steps], "W2": "all"},
        "engine": {"name": "numpy", "block_models": n_seed},
    }
    return parse_pipeline(raw)


def _same_for_all(
    cells: Sequence[PhaseMLCell], shapes: Mapping[Path, tuple[int, ...]]
) -> None:
    first = cells[0]
    seen: dict[tuple[float, float], Path] = {}
    for cell in cells:
        for field in ("batch_size", "activation"):
            if getattr(cell, field) != getattr(first, field):
                raise ConfigError(
                    f"{field}: {str(cell.path)!r} has {getattr(cell, field)!r} but "
                    f"{str(first.path)!r} has {getattr(first, field)!r}; one store "
                    f"holds one {field} (import them into separate stores)"
                )
        if shapes[cell.path] != shapes[first.path]:
            raise StoreError(
                f"{str(cell.path)!r} holds (seed, snapshot, n0, n1, n2, n3) = "
                f"{shapes[cell.path]} but {str(first.path)!r} holds "
                f"{shapes[first.path]}; one store needs equal shapes"
            )
        key = (cell.T, cell.sigma_W)
        if key in seen:
            raise ConfigError(
                f"{str(cell.path)!r} and {str(seen[key])!r} are both the cell "
                f"T={cell.T:g}, sigma_W={cell.sigma_W:g}; give each cell once"
            )
        seen[key] = cell.path


# name: (extra dims after (T, sigma_W, seed, t), long_name)
_CHECKPOINT_VARS = {
    "W2": (("unit2", "unit1"), "student weights W2"),
    "eigenvalues": (("eigen",), "eigenvalues of W2 W2ᵀ (ascending)"),
    "train_loss": (
        (),
        "training loss ½⟨|y − ŷ|²⟩: over the training set at t = 0, the mean "
        "minibatch loss of the epoch ending at t afterwards",
    ),
    "grad_norm": ((), "Frobenius norm of epoch_grad_W2"),
    "epoch_grad_W2": (
        ("unit2", "unit1"),
        "gradient ∇_W2 L: over the training set at t = 0, the mean minibatch "
        "gradient of the epoch ending at t afterwards",
    ),
    "diverged": ((), "run stopped (minibatch loss > 100) at or before t"),
    "done": ((), "checkpoint written"),
}
_BOOL_VARS = ("diverged", "done")
_ENSEMBLE_VARS = {
    "teacher_W1": ("M", ("unit1", "unit0"), "teacher weights W̄1"),
    "teacher_W2": ("Wt", ("unit2", "unit1"), "teacher weights W̄2"),
    "teacher_W3": ("Z", ("unit3", "unit2"), "teacher (and student) read-out W3"),
}


def _template(pipeline: Pipeline, cells: Sequence[PhaseMLCell]) -> xr.Dataset:
    """Lazy dataset of the whole store, chunked one file (cell) per chunk."""
    coords = store_coords(pipeline)
    n0, n1, n2, n3 = pipeline.model.widths
    sizes = {
        "T": len(pipeline.grid.T),
        "sigma_W": len(pipeline.grid.sigma_W),
        "seed": pipeline.grid.seeds,
        "t": pipeline.checkpoints.size,
        "unit0": n0,
        "unit1": n1,
        "unit2": n2,
        "unit3": n3,
        "eigen": n2,
    }
    variables = {}
    for name, (extra, long_name) in _CHECKPOINT_VARS.items():
        dtype = bool if name in _BOOL_VARS else np.float64
        variables[name] = _empty((*MODEL_DIMS, "t", *extra), sizes, dtype, long_name)
    for name, (_, extra, long_name) in _ENSEMBLE_VARS.items():
        variables[name] = _empty((*MODEL_DIMS, *extra), sizes, np.float64, long_name)
    attrs = store_attrs(pipeline, engine="phase_ml (imported)")
    attrs["source_format"] = "phase_ml"
    attrs["source_files"] = [_source_record(cell) for cell in cells]
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _empty(
    dims: tuple[str, ...], sizes: Mapping[str, int], dtype: Any, long_name: str
) -> xr.DataArray:
    """All-fill lazy variable chunked as one cell along (T, sigma_W) and t."""
    shape = tuple(sizes[d] for d in dims)
    one_cell = {"T": 1, "sigma_W": 1, "t": 1}
    chunks = tuple(one_cell.get(d, sizes[d]) for d in dims)
    fill = False if np.dtype(dtype) == bool else np.nan
    data = da.full(shape, fill, dtype=dtype, chunks=chunks)
    return xr.DataArray(data, dims=dims, attrs={"long_name": long_name, "units": "1"})


def _source_record(cell: PhaseMLCell) -> dict[str, Any]:
    """Provenance of one file: its folder and name, SHA-256 and cell."""
    return {
        "file": f"{cell.path.parent.name}/{cell.path.name}",
        "sha256": sha256_file(cell.path),
        "T": cell.T,
        "sigma_W": cell.sigma_W,
        "learning_rate": cell.learning_rate,
    }


def _create(path: Path, template: xr.Dataset, store: Path) -> None:
    encoding = {
        name: {
            "chunks": tuple(c[0] for c in var.data.chunks),
            "fill_value": False if var.dtype == bool else np.nan,
        }
        for name, var in template.data_vars.items()
    }
    try:
        template.to_zarr(
            path,
            mode="w",
            compute=False,
            zarr_format=3,
            consolidated=False,
            encoding=encoding,
        )
    except (OSError, ValueError) as error:
        raise StoreError(f"cannot create store {str(store)!r}: {error}") from None


def _write_cell(
    store: Path,
    template: xr.Dataset,
    cell: PhaseMLCell,
    arrays: Mapping[str, np.ndarray],
) -> None:
    """Write one file's cell: data first, ``done`` after it."""
    i_T = int(np.flatnonzero(template["T"].values == cell.T)[0])
    i_sigma = int(np.flatnonzero(template["sigma_W"].values == cell.sigma_W)[0])
    region = {"T": slice(i_T, i_T + 1), "sigma_W": slice(i_sigma, i_sigma + 1)}

    values = _cell_values(arrays)
    data = {
        name: ((*MODEL_DIMS, *template[name].dims[3:]), value[None, None])
        for name, value in values.items()
    }
    cell_ds = xr.Dataset(data)
    cell_ds.to_zarr(store, region=region, zarr_format=3, consolidated=False)

    done = np.ones((1, 1, *values["train_loss"].shape), dtype=bool)
    xr.Dataset({"done": ((*MODEL_DIMS, "t"), done)}).to_zarr(
        store, region=region, zarr_format=3, consolidated=False
    )


def _cell_values(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store variables of one cell, dims (seed, t, ...) or (seed, ...).

    The loss sentinel of a stopped run marks it ``diverged``; from there on
    its recorded values are replaced by NaN.
    """
    loss = arrays["loss"]
    stopped = np.zeros_like(loss, dtype=bool)
    stopped[:, 1:] = loss[:, 1:] == _DIVERGED_LOSS
    diverged = stopped | ~np.all(np.isfinite(arrays["W"]), axis=(-2, -1))

    W2 = np.where(diverged[..., None, None], np.nan, arrays["W"])
    grad = np.where(diverged[..., None, None], np.nan, arrays["dW"])
    return {
        "W2": W2,
        "eigenvalues": observables.eigenvalues(W2),
        "train_loss": np.where(diverged, np.nan, loss),
        "grad_norm": np.sqrt(np.sum(grad * grad, axis=(-2, -1))),
        "epoch_grad_W2": grad,
        "diverged": diverged,
        "teacher_W1": arrays["M"],
        "teacher_W2": arrays["Wt"],
        "teacher_W3": arrays["Z"],
    }
