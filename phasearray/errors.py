"""Exception and warning types of phasearray.

Each error also subclasses the built-in exception a caller would expect, so
``except ValueError`` keeps working for code that does not know phasearray.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "ConfigError",
    "EngineUnavailableError",
    "MissingVariableError",
    "PhasearrayError",
    "PhasearrayWarning",
    "StoreError",
    "StoreMismatchError",
    "UnsafePickleError",
]


class PhasearrayError(Exception):
    """Base class of every error raised on purpose by phasearray."""


class ConfigError(PhasearrayError, ValueError):
    """A pipeline or argument has a value outside what is allowed."""


class StoreError(PhasearrayError, OSError):
    """A store cannot be created, opened or written as asked."""


class MissingVariableError(StoreError):
    """A dataset lacks a variable an analysis or figure needs.

    Attributes
    ----------
    name : str
        The variable that is missing.
    """

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class StoreMismatchError(StoreError):
    """An existing store was made from another pipeline or schema."""


class ChecksumError(StoreError):
    """A file's size or SHA-256 differs from the one recorded for it."""


class UnsafePickleError(PhasearrayError, ValueError):
    """A pickle names a callable that plain NumPy arrays do not need."""


class EngineUnavailableError(PhasearrayError, RuntimeError):
    """The requested engine cannot run here (missing package or device)."""


class PhasearrayWarning(UserWarning):
    """Base class of phasearray's warnings."""
