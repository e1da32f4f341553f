"""Engines that advance W2 by SGD; pick one with :func:`get_engine`.

========== ============================================== ==================
name        what                                           needs
========== ============================================== ==================
numpy       batched matmuls, the readable reference         NumPy
numba       fused per-model kernel, parallel over models    Numba
cupy        the batched reference on CuPy arrays            CuPy and a GPU
cupy-fused  fused CUDA kernel, one model per warp           CuPy and a GPU
========== ============================================== ==================

``auto`` picks ``cupy-fused`` where CuPy sees a GPU, else ``numba`` where it
imports, else ``numpy``; where layers besides W2 train (``model.trainable``),
``cupy`` where CuPy sees a GPU, else ``numpy``. Optional packages are imported only when asked for.
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
_AUTO_ORDER = ("cupy-fused", "numba", "numpy")
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


def resolve_engine_name(name: str, trainable: tuple[str, ...] = ("W2",)) -> str:
    """Map ``auto`` to a concrete engine name; check other names exist.

    With layers besides W2 in ``trainable`` only the batched engines apply
    (``cupy`` where CuPy sees a GPU, else ``numpy``); asking for a fused one
    is a :class:`ConfigError`.
    """
    trains_outer = tuple(trainable) != ("W2",)
    if name != "auto":
        if name not in _ENGINES:
            raise ConfigError(
                f"engine {name!r} is not known; choose auto or one of "
                f"{', '.join(_ENGINES)}"
            )
        if trains_outer and name in FUSED_ENGINES:
            raise ConfigError(
                f"engine {name!r} trains W2 alone; with model.trainable = "
                f"{list(trainable)} choose auto, numpy or cupy"
            )
        return name
    available = available_engines()
    order = _AUTO_ORDER_OUTER if trains_outer else _AUTO_ORDER
    for candidate in order:
        if candidate in available:
            logger.debug("engine auto: choosing %s", candidate)
            return candidate
    return "numpy"


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
