"""Dual batch normalization: separate statistics for clean and adversarial inputs.

Clean and adversarial images have different activation statistics; one BatchNorm fit to the
mix serves both badly (AdvProp, RLNet). :class:`DualBatchNormalization` holds two BatchNorm
paths that share nothing but the input. A non-trainable ``route`` variable picks the path for
every call (training and inference): training steps switch it per batch with
:func:`set_bn_route` and put it back to the layer's ``inference_path`` afterwards.

The deployed model uses ONE fixed path, ``inference_path`` ("clean" by default): ``strip()``
turns each dual layer into a plain ``BatchNormalization`` holding that path's weights.
"""

import contextlib

from tfsafe._keras import keras, tf
from tfsafe.compress._rewrite import layer_entry, rebuild
from tfsafe.compress.strip import register_stripper
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.metrics import WeightStat, register_weight_stats, short_name
from tfsafe.validation import check_model

__all__ = ["DualBatchNormalization", "BN_PATHS", "set_bn_route", "bn_route", "dual_bn_layers",
           "dual_batchnorm", "with_inference_path"]

BN_PATHS = ("clean", "adversarial")


def _path_index(path):
    if path not in BN_PATHS:
        raise InputError(f"BatchNorm path must be one of {BN_PATHS}, got {path!r}.")
    return BN_PATHS.index(path)


@keras.utils.register_keras_serializable(package="tfsafe")
class DualBatchNormalization(keras.layers.Layer):
    """Two BatchNormalization paths (clean / adversarial) selected by a route variable.

    Args:
        axis, momentum, epsilon, center, scale: As in ``keras.layers.BatchNormalization``
            (used by both paths).
        inference_path: ``"clean"`` or ``"adversarial"``: the path the route returns to after
            training steps and the one ``strip()`` keeps for deployment.

    Example:
        >>> layer = DualBatchNormalization()
        >>> x = tf.random.normal((8, 3))
        >>> y_clean = layer(x, training=True)
        >>> set_bn_route(layer, "adversarial")
        >>> y_adv = layer(x * 5.0, training=True)  # updates only the adversarial statistics
        >>> set_bn_route(layer, "clean")
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 inference_path="clean", **kwargs):
        super().__init__(**kwargs)
        _path_index(inference_path)
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.inference_path = inference_path
        bn_args = {"axis": axis, "momentum": momentum, "epsilon": epsilon, "center": center, "scale": scale}
        self.bn_clean = keras.layers.BatchNormalization(name="clean", **bn_args)
        self.bn_adversarial = keras.layers.BatchNormalization(name="adversarial", **bn_args)

    def build(self, input_shape):
        # Built here, not lazily: variables cannot be created inside tf.cond branches.
        for bn in (self.bn_clean, self.bn_adversarial):
            with tf.name_scope(f"{self.name}/{bn.name}/"):
                bn.build(input_shape)
        with tf.name_scope(f"{self.name}/"):
            self.route = self.add_weight(
                "route", shape=(), trainable=False,
                initializer=keras.initializers.Constant(float(_path_index(self.inference_path))),
            )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        return tf.cond(
            self.route > 0.5,
            lambda: self.bn_adversarial(inputs, training=training),
            lambda: self.bn_clean(inputs, training=training),
        )

    def path(self, name):
        """The BatchNormalization layer of path ``name`` ("clean" or "adversarial")."""
        return (self.bn_clean, self.bn_adversarial)[_path_index(name)]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
            "center": self.center, "scale": self.scale, "inference_path": self.inference_path,
        })
        return config


def dual_bn_layers(model_or_layer):
    """All :class:`DualBatchNormalization` layers in a model (or ``[layer]`` for one layer)."""
    if isinstance(model_or_layer, DualBatchNormalization):
        return [model_or_layer]
    found = []
    for layer in getattr(model_or_layer, "layers", []):
        found.extend(dual_bn_layers(layer))
    return found


def set_bn_route(model_or_layer, path):
    """Route every dual BN layer to ``path`` ("clean", "adversarial" or "inference": each layer's
    own ``inference_path``). Graph-safe: usable inside ``train_step``."""
    for layer in dual_bn_layers(model_or_layer):
        index = _path_index(layer.inference_path if path == "inference" else path)
        layer.route.assign(float(index))


@contextlib.contextmanager
def bn_route(model, path):
    """Context manager: evaluate ``model`` through ``path``, then restore the previous routes.

    Example:
        >>> from tfsafe.methods.rlnet import rlnet_cnn
        >>> model = rlnet_cnn()
        >>> with bn_route(model, "adversarial"):
        ...     logits = model(tf.zeros((1, 8, 8, 1)))
    """
    layers = dual_bn_layers(model)
    saved = [float(layer.route.numpy()) for layer in layers]
    set_bn_route(model, path)
    try:
        yield model
    finally:
        for layer, value in zip(layers, saved):
            layer.route.assign(value)


def _bn_weights(bn):
    return [w.numpy() for w in bn.weights]


def dual_batchnorm(model, inference_path="clean"):
    """Replace every ``BatchNormalization`` of ``model`` by a :class:`DualBatchNormalization`
    whose two paths both start from the original layer's weights. Nested models are inlined.

    Raises:
        UnsupportedModelError: when the model has no BatchNormalization layer.

    Example:
        >>> from tfsafe.methods.rlnet import rlnet_cnn
        >>> dual = dual_batchnorm(rlnet_cnn(dual_bn=False))
        >>> len(dual_bn_layers(dual))
        3
    """
    _path_index(inference_path)
    model = check_model(model)  # Keras 3 converted, nested backbones inlined

    def replace(layer):
        if type(layer) is not keras.layers.BatchNormalization:
            return None
        cfg = layer.get_config()
        axis = cfg["axis"][0] if isinstance(cfg["axis"], (list, tuple)) and len(cfg["axis"]) == 1 else cfg["axis"]
        config = {"name": layer.name, "axis": axis, "momentum": cfg["momentum"], "epsilon": cfg["epsilon"],
                  "center": cfg["center"], "scale": cfg["scale"], "inference_path": inference_path}
        return [layer_entry(DualBatchNormalization, config)]

    if not any(type(layer) is keras.layers.BatchNormalization for layer in model.layers):
        raise UnsupportedModelError(
            f"'{model.name}' has no BatchNormalization layer to make dual; build the model with "
            "BatchNormalization before its ReLUs (e.g. tfsafe.methods.rlnet.rlnet_cnn)."
        )
    new_model, _ = rebuild(model, replace)
    for layer in dual_bn_layers(new_model):
        weights = _bn_weights(model.get_layer(layer.name))
        layer.bn_clean.set_weights(weights)
        layer.bn_adversarial.set_weights(weights)
    return new_model


def with_inference_path(model, path):
    """A copy of ``model`` whose dual BN layers deploy ``path`` (and are routed to it)."""
    _path_index(path)

    def replace(layer):
        if not isinstance(layer, DualBatchNormalization):
            return None
        return [layer_entry(DualBatchNormalization, dict(layer.get_config(), inference_path=path))]

    new_model, _ = rebuild(model, replace)
    set_bn_route(new_model, "inference")
    return new_model


def _strip_dual_bn(layer):
    bn = layer.path(layer.inference_path)
    config = bn.get_config()
    config["name"] = layer.name
    return keras.layers.BatchNormalization.from_config(config), _bn_weights(bn)


def _dual_bn_weight_stats(layer):
    """Only the deployed path's weights count; the other path and the route are training state."""
    bn = layer.path(layer.inference_path)
    return [WeightStat(layer.name, f"{layer.inference_path}/{short_name(w)}", w.numpy())
            for w in bn.weights]


register_stripper(DualBatchNormalization, _strip_dual_bn)
register_weight_stats(DualBatchNormalization, _dual_bn_weight_stats)

