"""Errors tfsafe raises for bad input. Each message says what is wrong and how to fix it."""

__all__ = ["TfsafeError", "InputError", "UnsupportedModelError", "MissingDependencyError"]


class TfsafeError(Exception):
    """Base class of every error tfsafe raises on purpose. The CLI prints these in one line."""


class InputError(TfsafeError, ValueError):
    """Data, arguments or files that tfsafe cannot use (wrong shape, NaN, missing file...)."""


class UnsupportedModelError(TfsafeError, TypeError):
    """A model or layer tfsafe cannot handle (the message names the layer)."""


class MissingDependencyError(TfsafeError, ImportError):
    """An optional dependency is missing; the message gives the exact install command."""
