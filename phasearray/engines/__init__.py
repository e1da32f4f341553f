"""Engines that advance W2 by SGD; pick one with :func:`get_engine`.

========== ============================================== ==================
name        what                                           needs
========== ============================================== ==================
numpy       batched matmuls, the readable reference         NumPy
numba       fused per-model kernel, parallel over models    Numba
cupy        the batched reference on CuPy arrays            CuPy and a GPU
cupy-fused  fused CUDA kernel, one model per warp           CuPy and a GPU
========== ============================================== ==================

``auto`` picks ``cupy-fused`` where CuPy sees a GPU (``cupy`` for widths its
kernel does not handle), else ``numba`` where it imports, else ``numpy``; where
layers besides W2 train (``model.trainable``), ``cupy`` where CuPy sees a GPU,
else ``numpy``. Optional packages are imported only when asked for.
"""

from __future__ import annotations

import importlib
import logging

from ..config import FUSED_ENGINES
from ..errors import ConfigError, EngineUnavailableError
from .base import Engine, SGDProblem, SGDState

__all__ = [
    "Engine",
    "SGDProblem",
    "SGDState",
    "available_engines",
    "get_engine",
    "resolve_engine_name",
]

logger = logging.getLogger(__name__)

# name -> (module, class); modules import their optional packages lazily.
_ENGINES = {
    "numpy": ("phasearray.engines.batched", "NumpyEngine"),
    "numba": ("phasearray.engines.fused_cpu", "NumbaEngine"),
    "cupy": ("phasearray.engines.gpu", "CupyEngine"),
    "cupy-fused": ("phasearray.engines.gpu", "CupyFusedEngine"),
}
_AUTO_ORDER = ("cupy-fused", "cupy", "numba", "numpy")
_AUTO_ORDER_OUTER = ("cupy", "numpy")


def get_engine(name: str = "auto") -> Engine:
    """An engine instance by name; ``auto`` picks the fastest available.

    Raises
    ------
    EngineUnavailableError
        The engine's package or device is missing here.
    ConfigError
        The name is not an engine.
    """
    name = resolve_engine_name(name)
    module_name, class_name = _ENGINES[name]
    try:
        module = importlib.import_module(module_name)
        engine_class = getattr(module, class_name)
        engine = engine_class()
    except (ImportError, AttributeError) as error:
        raise EngineUnavailableError(
            f"engine {name!r} cannot run here: {error}; available engines: "
            f"{', '.join(available_engines())}"
        ) from None
    return engine


def resolve_engine_name(
    name: str,
    trainable: tuple[str, ...] = ("W2",),
    shape: tuple[int, int, int, int] | None = None,
) -> str:
    """Map ``auto`` to a concrete engine name; check the engine fits the problem.

    Parameters
    ----------
    name : str
        An engine name or ``auto``.
    trainable : tuple of str
        The trained layers; besides W2 only the batched engines apply
        (``cupy`` where CuPy sees a GPU, else ``numpy``).
    shape : (n1, n2, n3, batch_size), optional
        Widths and minibatch size; ``auto`` passes over ``cupy-fused`` for a
        shape its kernel does not handle, and asking for it by name is then a
        :class:`ConfigError`.

    Raises
    ------
    ConfigError
        The name is not an engine, or the engine cannot train this problem.
    """
    trains_outer = tuple(trainable) != ("W2",)
    if name != "auto":
        _check_engine_fits(name, trainable, shape)
        return name
    available = available_engines()
    order = _AUTO_ORDER_OUTER if trains_outer else _AUTO_ORDER
    for candidate in order:
        if candidate in available and _shape_problem(candidate, shape) is None:
            logger.debug("engine auto: choosing %s", candidate)
            return candidate
    logger.debug("engine auto: choosing numpy, the reference engine")
    return "numpy"


def _check_engine_fits(
    name: str, trainable: tuple[str, ...], shape: tuple[int, int, int, int] | None
) -> None:
    if name not in _ENGINES:
        raise ConfigError(
            f"engine {name!r} is not known; choose auto or one of {', '.join(_ENGINES)}"
        )
    if tuple(trainable) != ("W2",) and name in FUSED_ENGINES:
        raise ConfigError(
            f"engine {name!r} trains W2 alone; with the trainable layers "
            f"{list(trainable)} choose auto, numpy or cupy"
        )
    reason = _shape_problem(name, shape)
    if reason is not None:
        raise ConfigError(f"field 'engine.name': {reason}")


def _shape_problem(name: str, shape: tuple[int, int, int, int] | None) -> str | None:
    """Why engine ``name`` cannot train this shape (only the CUDA kernel has bounds)."""
    if name != "cupy-fused" or shape is None:
        return None
    from .gpu import fused_shape_problem  # imports no CuPy

    return fused_shape_problem(*shape)


def available_engines() -> list[str]:
    """Engines whose packages (and device) are present, in preference order."""
    found = []
    for name in ("numpy", "numba", "cupy", "cupy-fused"):
        module_name, class_name = _ENGINES[name]
        try:
            module = importlib.import_module(module_name)
            engine_class = getattr(module, class_name)
        except (ImportError, AttributeError):
            continue
        if getattr(engine_class, "is_available", lambda: True)():
            found.append(name)
    return found
