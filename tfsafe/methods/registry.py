"""The method registry: ``get(name, **params)``, ``names()`` and ``register(name, cls)``.

Every method module registers its class when imported (``tfsafe.methods`` imports them all);
a new method plugs in with ``register("my_method", MyMethod)`` and is then available to
``tfsafe.methods.get``, recipes and ``tfsafe compress --method=my_method``.

Example:
    >>> import tfsafe.methods
    >>> tfsafe.methods.names()
    ('safecompress', 'atmc', 'self_compress', 'rlnet', 'baseline', 'dp_sgd')
    >>> tfsafe.methods.get("baseline", target_sparsity=0.8).target_sparsity
    0.8
"""

from tfsafe.errors import InputError
from tfsafe.methods.base import CompressionMethod

__all__ = ["register", "unregister", "get", "names", "method_class"]

_METHODS = {}


def register(name, cls):
    """Make ``cls`` (a :class:`CompressionMethod` subclass) available as ``name``; returns ``cls``.

    Raises:
        InputError: ``cls`` is not a CompressionMethod subclass, or ``name`` is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, CompressionMethod)):
        raise InputError(f"register('{name}', ...) needs a tfsafe.methods.CompressionMethod subclass, got {cls!r}.")
    if not isinstance(name, str) or not name.isidentifier():
        raise InputError(f"A method name must be an identifier such as 'my_method', got {name!r}.")
    if _METHODS.get(name, cls) is not cls:
        raise InputError(f"A method named '{name}' is already registered ({_METHODS[name].__name__}).")
    _METHODS[name] = cls
    return cls


def unregister(name):
    """Remove method ``name`` from the registry (e.g. a plug-in's test cleaning up); unknown names are ignored."""
    _METHODS.pop(name, None)


def names():
    """Registered method names, in registration order."""
    return tuple(_METHODS)


def method_class(name):
    """The class registered as ``name`` (one-line :class:`InputError` naming the choices if none)."""
    if name not in _METHODS:
        raise InputError(f"Unknown method {name!r}; choose one of {', '.join(_METHODS)}.")
    return _METHODS[name]


def get(name, **params):
    """A new instance of method ``name`` built with ``params`` (its constructor's arguments).

    Raises:
        InputError: unknown method or parameter (named, with the accepted ones), or a bad value.
    """
    cls = method_class(name)
    unknown = sorted(set(params) - set(cls.parameter_names()))
    if unknown:
        raise InputError(f"Unknown params for {name}: {', '.join(unknown)}; it takes "
                         f"{', '.join(cls.parameter_names())}.")
    return cls(**params)
