"""Recipes: each method's settings as JSON, shared by ``tfsafe compress`` and the Python API.

A recipe has the sections ``data`` (how the pool is split, see
:func:`tfsafe.data.membership_split`), ``dense`` (the dense model trained when none is
given), ``params`` (exactly the method's constructor arguments, the same names and defaults
as ``tfsafe.methods.get(method, **params)``), ``evaluation`` (the safety tests of
:func:`tfsafe.safety.evaluate.evaluate_safety`: radii, steps, restarts, examples, membership
attacks, the attack set whose per-example worst case is reported, the gradient-masking
checks) and ``export`` (the ``.tflite`` file). A user's config file overrides any subset of
the built-in recipe; unknown keys are errors, so a typo never silently falls back to a default. A method registered with
:func:`tfsafe.methods.register` without a recipe file gets the ``baseline`` recipe's
sections with its own constructor defaults as ``params``.

Example:
    >>> recipe = load_recipe("safecompress", {"params": {"target_sparsity": 0.8}})
    >>> recipe["params"]["target_sparsity"], recipe["params"]["entropy_weight"]
    (0.8, 0.1)
"""

import copy
import json
import os

from tfsafe.errors import InputError
from tfsafe.methods.registry import method_class

__all__ = ["METHODS", "load_recipe", "recipe_path", "merge_config", "check_params"]

METHODS = ("safecompress", "atmc", "self_compress", "rlnet", "baseline", "dp_sgd")  # the built-in recipe files
_HERE = os.path.dirname(os.path.abspath(__file__))


def recipe_path(method):
    """Path of the built-in recipe of ``method`` (one of :data:`METHODS`)."""
    if method not in METHODS:
        raise InputError(f"No built-in recipe for method {method!r}; the recipes are {', '.join(METHODS)}.")
    return os.path.join(_HERE, f"{method}.json")


def check_params(method, params):
    """Raise :class:`InputError` naming any key of ``params`` that ``method``'s constructor does not take."""
    accepted = method_class(method).parameter_names()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InputError(f"Unknown params for {method}: {', '.join(unknown)}; it takes {', '.join(accepted)}.")
    return params


def _builtin(method):
    if method in METHODS:
        return _read_json(recipe_path(method))
    cls = method_class(method)  # a registered method without a recipe file
    recipe = _read_json(recipe_path("baseline"))
    recipe.update(method=method, description=(cls.__doc__ or method).strip().splitlines()[0],
                  params=cls().get_config())
    return recipe


def _read_json(path):
    if not os.path.isfile(path):
        raise InputError(f"Config file '{path}' does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"Config file '{path}' is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise InputError(f"Config file '{path}' must hold a JSON object, got {type(config).__name__}.")
    return config


def merge_config(base, overrides, where="config", open_keys=()):
    """Return ``base`` updated by ``overrides``, recursively; unknown keys raise :class:`InputError`.

    Args:
        base: the recipe (not modified).
        overrides: a dict with a subset of ``base``'s keys.
        where: the name of ``overrides`` in error messages.
        open_keys: dotted paths of sections that accept new keys (e.g. ``"params"``, whose
            extra keys are checked against the method's signature later).
    """
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        path = f"{where}.{key}" if where != "config" else key
        if key not in base and path not in open_keys and where not in open_keys:
            raise InputError(f"Unknown key '{path}' in the config; known keys here: {', '.join(sorted(base))}.")
        if isinstance(base.get(key), dict):
            if not isinstance(value, dict):
                raise InputError(f"'{path}' must be a JSON object, got {json.dumps(value)}.")
            merged[key] = merge_config(base[key], value, path, open_keys)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_recipe(method, config=None):
    """The built-in recipe of ``method`` updated by ``config`` (a dict or a JSON file path).

    Args:
        method: one of :data:`METHODS`.
        config: ``None``, a dict or a path to a JSON file with overrides. A ``method`` key in
            it must agree with ``method``.

    Returns:
        The full recipe dict.

    Raises:
        InputError: unknown method, unknown key (its path named) or a params key the method's
            constructor does not take.
    """
    recipe = _builtin(method)
    if config is None:
        return recipe
    overrides = _read_json(os.fspath(config)) if isinstance(config, (str, os.PathLike)) else config
    if not isinstance(overrides, dict):
        raise InputError(f"config must be a dict or a JSON file path, got {type(config).__name__}.")
    if overrides.get("method", method) != method:
        raise InputError(f"The config is a recipe for '{overrides['method']}' but the method is '{method}'; "
                         "pass the matching --method or drop the 'method' key.")
    merged = merge_config(recipe, overrides, open_keys=("params",))
    check_params(method, merged["params"])
    return merged
