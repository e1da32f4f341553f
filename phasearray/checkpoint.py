"""What is computed at a checkpoint, on the engine's device, for every member.

Shared by sweeps and :func:`phasearray.simulate`: the held-out arrays a block
needs, the divergence mark, and every recorded observable (SPEC §3) as host
arrays. The quantities are defined in :mod:`phasearray.observables`; the
engine computes them (``Engine.train_observables`` and
``Engine.test_observables``: those functions, or a fused kernel).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import observables as obs
from .activations import activate
from .engines import Engine, SGDProblem
from .ensemble import teacher_outputs

__all__ = ["checkpoint_observables", "held_out_arrays", "mark_diverged"]


def held_out_arrays(
    engine: Engine,
    x_test: np.ndarray,
    teacher: tuple[np.ndarray, np.ndarray, np.ndarray],
    W2_initial: np.ndarray,
    problem: SGDProblem,
) -> dict[str, Any]:
    """Test-set inputs, features, targets and features at t = 0, on the device.

    The features at t = 0 use the teacher's W̄1, which is also the initial W1
    where W1 trains.

    Parameters
    ----------
    x_test : (S, n_test, n0)
    teacher : W̄1 (S, n1, n0), W̄2 (S, n2, n1), W̄3 (S, n3, n2)
    W2_initial : (M, n2, n1)
    """
    xp, dtype, activation = engine.xp, problem.dtype, problem.activation
    W1 = teacher[0]
    phi1_test = activate(activation, x_test @ np.swapaxes(W1, 1, 2), np)
    y_test = teacher_outputs(x_test, *teacher, activation)
    phi1_test = xp.asarray(phi1_test, dtype=dtype)
    W2_0 = xp.asarray(W2_initial, dtype=dtype)
    phi2_initial = obs.features(
        phi1_test[xp.asarray(problem.member_stream)], W2_0, activation, xp
    )
    return {
        "x": xp.asarray(x_test, dtype=dtype),
        "phi1": phi1_test,
        "y": xp.asarray(y_test, dtype=dtype),
        "phi2_initial": phi2_initial,
    }


def mark_diverged(engine: Engine, state: Any) -> None:
    """Set every member holding NaN or inf in any trained layer entirely to NaN."""
    xp = engine.xp
    layers = [state.W2, *state.trained.values()]
    finite = xp.all(xp.isfinite(state.W2), axis=(1, 2))
    for layer in layers[1:]:
        finite &= xp.all(xp.isfinite(layer), axis=(1, 2))
    for layer in layers:
        layer[~finite] = xp.nan


def checkpoint_observables(
    engine: Engine, state: Any, test: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Every recorded observable of every member, as host arrays (SPEC §3).

    Returns
    -------
    dict of str to numpy.ndarray
        ``W2`` (M, n2, n1), ``eigenvalues`` (M, n2) and the scalars (M,):
        ``train_loss``, ``test_loss``, ``grad_norm``, ``feature_overlap``,
        ``alignment``, ``diverged``; and ``W1`` (M, n1, n0), ``W3``
        (M, n3, n2) where those layers train.
    """
    xp = engine.xp
    out: dict[str, np.ndarray] = {}
    out["train_loss"], out["grad_norm"] = engine.train_observables(state)
    out.update(engine.test_observables(state, test))
    with np.errstate(all="ignore"):
        out["eigenvalues"] = engine.to_host(obs.eigenvalues(state.W2, xp))
    out["W2"] = engine.to_host(state.W2).copy()
    for name, layer in state.trained.items():
        out[name] = engine.to_host(layer).copy()
    out["diverged"] = ~np.isfinite(out["W2"]).all(axis=(1, 2))
    return out
