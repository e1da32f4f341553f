"""SGD's sensitivity to initial conditions: the finite-time Lyapunov exponent.

Each model gets a twin started from W2(0) + d0 u, with u a random unit
direction (Frobenius norm) and d0 = ε_rel |W2(0)|_F, trained on the same
minibatches. Every ``interval`` steps (and at every checkpoint) the separation
d = |W2_twin − W2|_F is measured, log(d/d_prev) added to a running sum G(t),
and the twin pulled back along the same direction to d_new = ε_rel |W2(t)|_F
(Benettin et al., Meccanica 15 (1980) 9). Scaling the separation with the
current weights keeps it representable when W2 grows by many decades, as it
does in the hot phase. The finite-time maximal exponent is

    λ(t) = G(t) / t   (per SGD step),

positive where SGD is chaotic (the hot phase, SPEC §2) and negative where
nearby trajectories contract.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .engines import Engine, SGDProblem, SGDState
from .schedule import keyed_generator

__all__ = [
    "advance_with_twins",
    "base_view",
    "exponent",
    "initial_twins",
    "twin_problem",
]

_TAG = 0x4C59


def twin_problem(problem: SGDProblem) -> SGDProblem:
    """The block's problem with every member doubled (members M … 2M−1 are twins)."""
    return replace(
        problem,
        member_stream=np.concatenate([problem.member_stream] * 2),
        learning_rate=np.concatenate([problem.learning_rate] * 2),
    )


def initial_twins(
    W2_initial: np.ndarray, member_keys: list[tuple[int, ...]], perturbation: float
) -> tuple[np.ndarray, np.ndarray]:
    """Twins' W2(0) and the separation d0 of each member.

    Parameters
    ----------
    W2_initial : (M, n2, n1)
    member_keys : M keys, one per model (see :func:`phasearray.ensemble.stream_key`)
    perturbation : float
        ε_rel, the separation relative to |W2(0)|_F.

    Returns
    -------
    twins : (M, n2, n1)
    d0 : (M,)
    """
    directions = np.stack(
        [
            keyed_generator(key, _TAG).standard_normal(W2_initial.shape[1:])
            for key in member_keys
        ]
    )
    directions /= np.linalg.norm(directions, axis=(1, 2), keepdims=True)
    d0 = perturbation * np.linalg.norm(W2_initial, axis=(1, 2))
    return W2_initial + d0[:, None, None] * directions, d0


def base_view(state: SGDState, problem: SGDProblem) -> SGDState:
    """The first M members of a doubled state (views, no copies)."""
    M = problem.n_members
    arrays = dict(state.arrays)
    arrays["member_stream"] = arrays["member_stream"][:M]
    arrays["step_size"] = arrays["step_size"][:M]
    return SGDState(problem=problem, W2=state.W2[:M], arrays=arrays)


def advance_with_twins(
    engine: Engine,
    state: SGDState,
    t0: int,
    t1: int,
    interval: int,
    perturbation: float,
    log_growth: np.ndarray,
) -> None:
    """Advance models and twins from t0 to t1, renormalising the twins.

    Renormalisation happens at every multiple of ``interval`` and at t1, so the
    same points are used whatever the checkpoints before t0 were.

    Parameters
    ----------
    perturbation : float
        ε_rel; at t0 each twin is ε_rel |W2(t0)|_F away from its model.
    log_growth : (M,) float64
        Running sum G of log(d/d_prev), updated in place.
    """
    M = log_growth.size
    d_previous = perturbation * _norms(engine, state.W2[:M])
    stops = [*range((t0 // interval + 1) * interval, t1, interval), t1]
    t = t0
    for stop in stops:
        if stop <= t:
            continue
        engine.advance(state, t, stop)
        d_previous = _renormalise(engine, state, perturbation, d_previous, log_growth)
        t = stop


def _norms(engine: Engine, W2: Any) -> np.ndarray:
    """Frobenius norms of (M, n2, n1) matrices, as float64 host values."""
    xp = engine.xp
    with np.errstate(all="ignore"):
        return engine.to_host(xp.sqrt(xp.sum(W2 * W2, axis=(1, 2)))).astype(np.float64)


def _renormalise(
    engine: Engine,
    state: SGDState,
    perturbation: float,
    d_previous: np.ndarray,
    log_growth: np.ndarray,
) -> np.ndarray:
    """Add log(d/d_prev) to G; pull the twins back to ε_rel |W2|; return that distance."""
    xp = engine.xp
    M = d_previous.size
    base = state.W2[:M]
    separation = state.W2[M:] - base
    d = _norms(engine, separation)
    d_new = perturbation * _norms(engine, base)
    with np.errstate(all="ignore"):
        log_growth += np.log(d / d_previous)
        scale = xp.asarray(d_new / d, dtype=state.W2.dtype)
        state.W2[M:] = base + scale[:, None, None] * separation
    return d_new


def exponent(log_growth: np.ndarray, t: int) -> np.ndarray:
    """λ(t) = G(t)/t per step; NaN at t = 0."""
    if t == 0:
        return np.full_like(log_growth, np.nan)
    return log_growth / t
