"""Activation functions φ and their derivatives, for any array namespace."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

__all__ = ["activate", "derivative"]


def activate(name: str, z: Any, xp: Any) -> Any:
    """φ(z) for ``name`` in {"tanh", "relu", "identity"}; same dims as ``z``."""
    if name == "tanh":
        return xp.tanh(z)
    if name == "relu":
        return xp.maximum(z, 0)
    if name == "identity":
        return z
    raise ConfigError(
        f"activation {name!r} is not known; choose tanh, relu or identity"
    )


def derivative(name: str, z: Any, h: Any, xp: Any) -> Any:
    """φ'(z), given ``h = φ(z)``; tanh' = 1 - h², relu' = [z > 0], identity' = 1."""
    if name == "tanh":
        return 1 - h * h
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "identity":
        return xp.ones_like(z)
    raise ConfigError(
        f"activation {name!r} is not known; choose tanh, relu or identity"
    )
