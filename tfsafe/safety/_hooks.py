"""Temporarily replace layers' ``call`` (for straight-through gradients and activation capture).

Keras runs ``layer.call`` from ``Layer.__call__``, so an instance attribute named ``call``
takes effect in eager mode and in any graph traced while it is set. Keras itself sometimes
leaves a bound ``call`` on the instance (e.g. after a TFLite conversion); it is put back
afterwards.
"""

import contextlib

_MISSING = object()


@contextlib.contextmanager
def patched_calls(layers, make_call):
    """Within the block, ``layer.call`` is ``make_call(layer, original_call)`` for each layer.

    ``make_call`` returns ``None`` to leave a layer alone. Layers already patched by an outer
    block are left alone too.
    """
    saved = []
    for layer in layers:
        current = vars(layer).get("call", _MISSING)
        if getattr(current, "_tfsafe_hook", False):
            continue
        new_call = make_call(layer, layer.call)
        if new_call is None:
            continue
        new_call._tfsafe_hook = True
        object.__setattr__(layer, "call", new_call)
        saved.append((layer, current))
    try:
        yield
    finally:
        for layer, previous in reversed(saved):
            if previous is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)
