"""Model surgery shared by the compression modules.

:func:`clone_with_weights` maps every layer to one new layer with given weights, through
``keras.models.clone_model`` (what ``strip()``, ``factorize()``, ``low_rank()`` and channel
removal do).

Cloning maps each layer to exactly one new layer. Linearization needs more:
a ``Conv2D(activation="relu")`` becomes the convolution plus a separate mask layer (and maybe a
batch norm in between). :func:`rebuild` edits the model config instead: the first layer of a chain
takes the replaced layer's inputs, downstream references are redirected to the last layer of the
chain, and the new model is built with ``from_config`` and given the old weights by layer name.
Works for Sequential and Functional ``tf_keras`` models, including shared layers; nested models
(a backbone used as a layer) are inlined first (:func:`tfsafe._keras.flatten_nested`).
"""

import copy

from tfsafe._keras import flatten_nested, keras
from tfsafe.errors import UnsupportedModelError

__all__ = ["clone_with_weights", "rebuild", "copy_layer_weights", "layer_entry"]


def clone_with_weights(model, clone_fn, what="clone"):
    """``keras.models.clone_model`` where each layer may come back replaced, with its weights.

    Args:
        model: a Sequential or Functional ``tf_keras`` model (not modified).
        clone_fn: ``fn(layer) -> (new_unbuilt_layer, weights)``, or ``None`` to copy the layer
            as it is (same config, same weights).
        what: the public function doing the cloning, for error messages.

    Returns:
        The new model, each layer holding the weights ``clone_fn`` gave it.

    Raises:
        UnsupportedModelError: the model cannot be cloned (e.g. a subclassed model).
    """
    if isinstance(model, keras.Model) and getattr(model, "_is_graph_network", False):
        model = flatten_nested(model)  # wrappers inside a nested backbone are reached too
    pending = {}

    def clone_layer(layer):
        result = clone_fn(layer)
        if result is None:
            result = layer.__class__.from_config(layer.get_config()), layer.get_weights()
        new_layer, weights = result
        pending[new_layer.name] = weights
        return new_layer

    try:
        new_model = keras.models.clone_model(model, clone_function=clone_layer)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise UnsupportedModelError(
            f"{what}() could not rebuild '{model.name}' ({err}). Only Sequential and Functional models "
            "can be rebuilt: express a subclassed model as one of them."
        ) from err
    for layer in new_model.layers:
        if pending.get(layer.name):
            layer.set_weights(pending[layer.name])
    return new_model


def layer_entry(layer_or_class, config, weights=None):
    """One element of a replacement chain: a layer class (or instance to copy the class of),
    its config (must contain a unique ``name``) and optional weights to load after building."""
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    return {"class": cls, "config": dict(config), "weights": weights}


def copy_layer_weights(src, dst):
    """Copy weights between two layers, matched by variable name when the order differs."""
    src_vars, dst_vars = src.weights, dst.weights
    if len(src_vars) != len(dst_vars):
        raise UnsupportedModelError(
            f"Layer '{dst.name}' has {len(dst_vars)} weights but its source has {len(src_vars)}."
        )
    by_name = {_short(v.name): v for v in src_vars}
    if len(by_name) == len(src_vars) and all(_short(v.name) in by_name for v in dst_vars):
        for v in dst_vars:
            v.assign(by_name[_short(v.name)].numpy())
    else:
        dst.set_weights(src.get_weights())


def _short(name):
    # "model/conv1/kernel:0" -> "kernel"; sublayer weights keep their sublayer prefix.
    parts = name.split(":")[0].split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else parts[-1]


def _serialize(cls, config):
    return keras.layers.serialize(cls.from_config(config))


def _redirect(obj, old, new):
    """Replace references ``[old, node, tensor(, kwargs)]`` by ``[new, node, tensor(, kwargs)]``."""
    if isinstance(obj, (list, tuple)):
        if (len(obj) in (3, 4) and obj[0] == old and isinstance(obj[1], int)
                and isinstance(obj[2], int)):
            return [new] + [_redirect(v, old, new) for v in obj[1:]]
        return [_redirect(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _redirect(v, old, new) for k, v in obj.items()}
    return obj


def rebuild(model, replace):
    """Rebuild ``model`` with some layers replaced by chains of layers.

    Args:
        model: A Sequential or Functional ``tf_keras`` model.
        replace: ``fn(layer) -> None | list of layer_entry(...)``. ``None`` keeps the layer. A
            list replaces it; an entry whose name equals the old layer's name and whose class is
            the same receives the old weights unless it brings its own.

    Returns:
        ``(new_model, created)``: the rebuilt model and the names of the replacement layers.
    """
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(f"Expected a tf_keras model, got {type(model).__name__}.")
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise UnsupportedModelError(
            f"'{model.name}' is a subclassed model; tfsafe can rewrite only Sequential and "
            "Functional models. Express it as a Functional model."
        )
    model = flatten_nested(model)
    chains = {}
    for layer in model.layers:
        chain = replace(layer)
        if chain:
            chains[layer.name] = chain

    config = copy.deepcopy(model.get_config())
    created, own_weights = set(), {}
    if isinstance(model, keras.Sequential):
        layers = []
        for entry in config["layers"]:
            name = entry["config"].get("name")
            if name not in chains:
                layers.append(entry)
                continue
            for item in chains[name]:
                layers.append(_serialize(item["class"], item["config"]))
        config["layers"] = layers
    else:
        last = {name: chain[-1]["config"]["name"] for name, chain in chains.items()}

        def redirect_all(obj):
            for old, new in last.items():
                if old != new:
                    obj = _redirect(obj, old, new)
            return obj

        layers = []
        for entry in config["layers"]:
            name = entry["name"]
            inbound = redirect_all(entry["inbound_nodes"])
            if name not in chains:
                layers.append(dict(entry, inbound_nodes=inbound))
                continue
            previous = None
            for item in chains[name]:
                new = _serialize(item["class"], item["config"])
                new["name"] = item["config"]["name"]
                if previous is None:
                    new["inbound_nodes"] = inbound
                else:  # one call of the new layer per call of the replaced (possibly shared) layer
                    new["inbound_nodes"] = [[[previous, k, 0, {}]] for k in range(len(inbound))]
                layers.append(new)
                previous = new["name"]
        config["layers"] = layers
        config["output_layers"] = redirect_all(config["output_layers"])
    for chain in chains.values():
        for item in chain:
            created.add(item["config"]["name"])
            if item["weights"] is not None:
                own_weights[item["config"]["name"]] = item["weights"]

    try:
        new_model = model.__class__.from_config(config)
    except (TypeError, ValueError) as err:
        raise UnsupportedModelError(f"Could not rebuild '{model.name}' after rewriting: {err}") from err
    old_layers = {layer.name: layer for layer in model.layers}
    for layer in new_model.layers:
        if layer.name in own_weights:
            layer.set_weights(own_weights[layer.name])
        elif layer.name in old_layers and type(old_layers[layer.name]) is type(layer):
            copy_layer_weights(old_layers[layer.name], layer)
    return new_model, created

