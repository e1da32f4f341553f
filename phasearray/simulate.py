"""Train students from explicitly given arrays and get a labelled Dataset back.

:func:`simulate` is the library entry point for one-off experiments and
cross-checks: no pipeline, no store, the same engines and observables as a
sweep.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr
from pydantic import ValidationError

from .activations import activate
from .checkpoint import checkpoint_observables, held_out_arrays, mark_diverged
from .config import ACTIVATIONS, DTYPES, SCHEDULES, Model
from .engines import SGDProblem, get_engine, resolve_engine_name
from .ensemble import make_ensemble, stream_key, teacher_outputs
from .errors import ConfigError
from .store import CHECKPOINT_VARS

__all__ = ["simulate"]


def simulate(
    *,
    teacher: tuple[Any, Any, Any],
    x_train: Any,
    W2_init: Any,
    learning_rate: float | Sequence[float],
    batch_size: int,
    steps: int,
    checkpoints: Sequence[int] | None = None,
    schedule: str = "sequential",
    activation: str = "tanh",
    dtype: str = "float64",
    engine: str = "auto",
    x_test: Any = None,
    seed: int | Sequence[int] = 0,
    trainable: Sequence[str] = ("W2",),
) -> xr.Dataset:
    """Train students by SGD from given teacher, data and initial weights.

    Every array may carry a leading ``member`` dimension; members train
    independently and together.

    Parameters
    ----------
    teacher : (W1, W2, W3)
        Teacher weights, dims ([member,] n1, n0), ([member,] n2, n1),
        ([member,] n3, n2). W1 and W3 are also the student's layers: frozen,
        or the starting point where ``trainable`` lists them.
    x_train : array, dims ([member,] n_train, n0)
    W2_init : array, dims ([member,] n2, n1)
        The student's initial W2.
    learning_rate : float or sequence of float
        ε, one value or one per member; T = ε / |B|.
    batch_size : int
        |B|.
    steps : int
        SGD steps to run.
    checkpoints : sequence of int, optional
        Steps at which W2 and the observables are recorded; 0 and ``steps``
        are always included. Default: every epoch (|D| // |B| steps).
    schedule : {"sequential", "shuffle", "iid"}
    activation : {"tanh", "relu", "identity"}
    dtype : {"float64", "float32"}
    engine : str
        ``auto``, ``numpy``, ``numba``, ``cupy`` or ``cupy-fused``.
    x_test : array, dims ([member,] n_test, n0), optional
        Default: 128 inputs drawn from ``seed`` as a sweep would.
    seed : int or sequence of int
        Keys the ``shuffle`` and ``iid`` schedules (and the default x_test).
    trainable : sequence of {"W1", "W2", "W3"}
        Layers SGD updates; must include W2. Where W1 or W3 train, only the
        ``numpy`` and ``cupy`` engines apply.

    Returns
    -------
    xarray.Dataset
        ``W2`` (member, t, unit2, unit1) and the observables of
        ``docs/store.md`` over (member, t), with ``W1`` (member, t, unit1,
        unit0) and ``W3`` (member, t, unit3, unit2) where they train; the
        ``member`` dim is dropped when no input had one.

    Raises
    ------
    ConfigError
        An argument outside what is allowed, naming it: an unknown choice, a
        count out of range, arrays whose shapes disagree with the teacher's
        widths, or an input array with NaN or infinite entries.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> W1, W2, W3 = rng.normal(size=(32, 3)), rng.normal(size=(16, 32)), rng.normal(size=(1, 16))
    >>> ds = simulate(teacher=(W1, W2 / 6, W3 / 4), x_train=rng.normal(size=(400, 3)),
    ...               W2_init=0.1 * rng.normal(size=(16, 32)), learning_rate=0.1,
    ...               batch_size=4, steps=200, engine="numpy")
    >>> ds.train_loss.dims, ds.t.values.tolist()
    (('t',), [0, 100, 200])
    """
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("dtype", dtype, DTYPES)

    arrays = _member_arrays(teacher, x_train, W2_init, x_test)
    M = arrays["W2_init"].shape[0]
    rates = _per_member("learning_rate", learning_rate, M, float)
    seeds = _per_member("seed", seed, M, int)
    if np.any(rates <= 0) or not np.all(np.isfinite(rates)):
        raise ConfigError(
            f"learning_rate: got {learning_rate!r}; must be positive and finite"
        )
    n_train = arrays["x_train"].shape[1]
    _check_int("batch_size", batch_size, 1, n_train)
    _check_int("steps", steps, 0, None)
    t = _checkpoints(checkpoints, steps, n_train // batch_size)

    layers = _check_trainable(trainable)
    problem, x_test_s, teacher_s = _problem(
        arrays, rates, seeds, batch_size, schedule, activation, dtype
    )
    problem = replace(problem, trainable=layers)
    n1, n2, n3 = problem.phi1.shape[2], problem.W3.shape[2], problem.W3.shape[1]
    shape = (n1, n2, n3, batch_size)
    runner = get_engine(resolve_engine_name(engine, layers, shape))
    state = runner.start(problem, arrays["W2_init"])
    test = held_out_arrays(runner, x_test_s, teacher_s, arrays["W2_init"], problem)

    records = []
    t_previous = 0
    for t_k in t:
        runner.advance(state, t_previous, int(t_k))
        mark_diverged(runner, state)
        records.append(checkpoint_observables(runner, state, test))
        t_previous = int(t_k)

    ds = _dataset(records, t, rates, batch_size, n_train, runner.name)
    if not arrays["has_member"]:
        ds = ds.isel(member=0)
    return ds


def _check_trainable(trainable: Sequence[str]) -> tuple[str, ...]:
    """The layers to train in canonical order, or a ConfigError."""
    try:
        return Model.model_validate({"trainable": list(trainable)}).trainable
    except ValidationError as error:
        message = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"trainable: got {list(trainable)!r}; {message}") from None


def _check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}: got {value!r}; allowed: {', '.join(allowed)}")


def _check_int(field: str, value: Any, low: int, high: int | None) -> None:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{field}: got {value!r}; must be an integer in {bound}")


def _per_member(field: str, value: Any, M: int, kind: type) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64 if kind is float else np.int64)
    if array.ndim == 0:
        return np.full(M, array)
    if array.shape != (M,):
        raise ConfigError(
            f"{field}: got shape {array.shape}; must be one value or one per member ({M})"
        )
    return array


def _member_arrays(
    teacher: tuple[Any, Any, Any], x_train: Any, W2_init: Any, x_test: Any
) -> dict[str, Any]:
    """Give every array a leading member dim and check the shapes agree."""
    if not isinstance(teacher, tuple | list) or len(teacher) != 3:
        raise ConfigError("teacher: must be a tuple (W1, W2, W3) of arrays")
    named = {
        "teacher_W1": teacher[0],
        "teacher_W2": teacher[1],
        "teacher_W3": teacher[2],
        "x_train": x_train,
        "W2_init": W2_init,
    }
    if x_test is not None:
        named["x_test"] = x_test
    arrays = {k: _float_array(k, v) for k, v in named.items()}
    bad = [k for k, v in arrays.items() if v.ndim not in (2, 3)]
    if bad:
        raise ConfigError(
            f"{bad[0]}: got {arrays[bad[0]].ndim} dims; must be 2 or 3 (member first)"
        )
    for name, array in arrays.items():
        _check_finite(name, array)
    has_member = any(v.ndim == 3 for v in arrays.values())
    M = max(v.shape[0] if v.ndim == 3 else 1 for v in arrays.values())
    for name, array in arrays.items():
        if array.ndim == 3 and array.shape[0] != M:
            raise ConfigError(f"{name}: has {array.shape[0]} members; others have {M}")
    out: dict[str, Any] = {
        k: (v if v.ndim == 3 else v[None]) for k, v in arrays.items()
    }
    out["W2_init"] = np.broadcast_to(out["W2_init"], (M, *out["W2_init"].shape[1:]))
    _check_widths(out)
    out["has_member"] = has_member
    out["per_member"] = {k for k, v in arrays.items() if v.ndim == 3}
    return out


def _float_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a float64 array, or a ConfigError naming the field."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{name}: got a {type(value).__name__} that is not an array of numbers "
            f"({error})"
        ) from None


def _check_finite(name: str, array: np.ndarray) -> None:
    """Refuse NaN and ±inf in an input array, naming the first one."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(
            f"{name}: {int(bad.sum())} entries are NaN or infinite (the first at "
            f"index {first}: {array[first]}); inputs must be finite"
        )


def _check_widths(arrays: dict[str, Any]) -> None:
    """The widths n0 … n3 come from the teacher: W1 (n1, n0), W2 (n2, n1), W3 (n3, n2)."""
    n1, n0 = arrays["teacher_W1"].shape[1:]
    n2 = arrays["teacher_W2"].shape[1]
    n3 = arrays["teacher_W3"].shape[1]
    expected = {
        "teacher_W2": (n2, n1),
        "teacher_W3": (n3, n2),
        "W2_init": (n2, n1),
        "x_train": (None, n0),
        "x_test": (None, n0),
    }
    for name, shape in expected.items():
        if name not in arrays:
            continue
        got = arrays[name].shape[1:]
        if any(e is not None and g != e for g, e in zip(got, shape, strict=True)):
            wanted = ", ".join("any" if e is None else str(e) for e in shape)
            teacher = ", ".join(
                f"{k[-2:]} {arrays[k].shape[1:]}"
                for k in ("teacher_W1", "teacher_W2", "teacher_W3")
            )
            raise ConfigError(
                f"{name}: got shape {got}; expected ({wanted}) for the teacher's "
                f"widths n0 = {n0}, n1 = {n1}, n2 = {n2}, n3 = {n3}, read from "
                f"teacher {teacher} (n1 × n0, n2 × n1, n3 × n2): one of them is wrong"
            )


def _problem(
    arrays: dict[str, Any],
    rates: np.ndarray,
    seeds: np.ndarray,
    batch_size: int,
    schedule: str,
    activation: str,
    dtype: str,
) -> tuple[SGDProblem, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One stream per distinct (data set, seed) pair of the members."""
    data_index = _distinct_data(arrays, rates.size)
    pairs = np.stack([data_index, seeds], axis=1)
    unique, member_stream = np.unique(pairs, axis=0, return_inverse=True)
    member_stream = member_stream.ravel()

    def pick(name: str) -> np.ndarray:
        array = arrays[name]
        return array[np.minimum(unique[:, 0], array.shape[0] - 1)]

    W1, W2t, W3 = pick("teacher_W1"), pick("teacher_W2"), pick("teacher_W3")
    x = pick("x_train")
    if "x_test" in arrays:
        x_test = pick("x_test")
    else:
        keys = [stream_key(int(s)) for s in unique[:, 1]]
        n0, n1 = W1.shape[2], W1.shape[1]
        drawn = make_ensemble(keys, (n0, n1, W2t.shape[1], W3.shape[1]), 1, 128)
        x_test = drawn.x_test
    phi1 = activate(activation, x @ np.swapaxes(W1, 1, 2), np)
    problem = SGDProblem(
        phi1=phi1,
        y=teacher_outputs(x, W1, W2t, W3, activation),
        W3=W3,
        keys=tuple(stream_key(int(s)) for s in unique[:, 1]),
        member_stream=member_stream,
        learning_rate=rates,
        batch_size=batch_size,
        schedule=schedule,
        activation=activation,
        dtype=dtype,
        x=x,
        W1=W1,
    )
    return problem, x_test, (W1, W2t, W3)


def _distinct_data(arrays: dict[str, Any], M: int) -> np.ndarray:
    """Per member, the first member with the same teacher and inputs, dims (M,).

    Members handed identical copies of a data set share one stream, so its
    features are computed and held once (as in a sweep).
    """
    names = sorted(arrays["per_member"] - {"W2_init"})
    if not names:
        return np.zeros(M, dtype=np.int64)
    digests = [
        hashlib.blake2b(b"".join(arrays[n][m].tobytes() for n in names)).hexdigest()
        for m in range(M)
    ]
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


def _checkpoints(
    checkpoints: Sequence[int] | None, steps: int, per_epoch: int
) -> np.ndarray:
    if checkpoints is None:
        return np.unique(np.r_[np.arange(0, steps, per_epoch), steps]).astype(np.int64)
    values = np.asarray(list(checkpoints))
    if values.size and (
        not np.issubdtype(values.dtype, np.integer)
        or np.any(np.diff(values) <= 0)
        or values[0] < 0
        or values[-1] > steps
    ):
        raise ConfigError(
            f"checkpoints: got {list(checkpoints)}; must be strictly increasing integer "
            f"steps in [0, steps = {steps}]"
        )
    return np.unique(np.r_[0, values, steps]).astype(np.int64)


def _dataset(
    records: list[dict[str, np.ndarray]],
    t: np.ndarray,
    rates: np.ndarray,
    batch_size: int,
    n_train: int,
    engine: str,
) -> xr.Dataset:
    dims = {
        "W1": ("member", "t", "unit1", "unit0"),
        "W2": ("member", "t", "unit2", "unit1"),
        "W3": ("member", "t", "unit3", "unit2"),
        "eigenvalues": ("member", "t", "eigen"),
    }
    data = {}
    for name in records[0]:
        stacked = np.stack([r[name] for r in records], axis=1)
        data[name] = (dims.get(name, ("member", "t")), stacked)
    coords = {
        "t": ("t", t, {"long_name": "SGD steps", "units": "steps"}),
        "epoch": (
            "t",
            t / (n_train // batch_size),
            {"long_name": "epochs", "units": "epochs"},
        ),
        "learning_rate": (
            "member",
            rates,
            {"long_name": "learning rate ε", "units": "1"},
        ),
        "T": (
            "member",
            rates / batch_size,
            {"long_name": "temperature ε/|B|", "units": "1"},
        ),
    }
    ds = xr.Dataset(
        data, coords=coords, attrs={"engine": engine, "batch_size": batch_size}
    )
    for name, (_, long_name, units) in CHECKPOINT_VARS.items():
        if name in ds:
            ds[name].attrs.update(long_name=long_name, units=units)
    return ds
