"""The conformance zoo: small real models x tfsafe mechanisms, one function per cell.

Shared by ``tests/conformance/test_matrix.py`` (every cell asserted) and
``benchmarks/support_matrix.py`` (the README's "supported models" table). Every model is tiny
(32x32 inputs, small width multipliers, ``weights=None``) and built once per process
(:func:`model`). A cell function returns a short value string when the mechanism works with
the right value (it asserts that value itself) and raises otherwise; :data:`LIMITS` lists the
cells where the runtime truly cannot, with the one-line error they must raise.
"""

import functools
import os
import re
import shutil
import tempfile

import keras as keras3
import numpy as np
import pytest

import tflite_export
import tfsafe
from tfsafe._keras import keras, tfmot
from tfsafe.compress.dynamic_sparsity import DynamicSparsity
from tfsafe.compress.factorization import factorize
from tfsafe.compress.linearization import linearize
from tfsafe.compress.pruning import is_prunable, prunable_wrappers, prune_safe
from tfsafe.compress.quantization import quantize_learnable
from tfsafe.compress.strip import strip
from tfsafe.errors import TfsafeError, UnsupportedModelError
from tfsafe.metrics import relu_count
from tfsafe.safety.adversarial import pgd_attack
from tfsafe.safety.membership import audit_membership
from tfsafe.validation import check_model

IMAGE = (32, 32, 3)
CLASSES = 10
N = 32  # examples per data set: calibration, parity, attacks

# ----------------------------------------------------------------------------- backbones


def _backbone(family, lib):
    """The first blocks of a keras.applications ``family`` built with ``lib`` (Keras 3 or tf_keras).

    Cut after the blocks that hold the family's characteristic layers, so every cell stays fast.
    """
    apps = lib.applications
    if family == "mobilenetv2":  # BatchNormalization, DepthwiseConv2D, ReLU6, Add
        full = apps.MobileNetV2(IMAGE, alpha=0.35, include_top=False, weights=None)
        cut = "block_2_add"
    elif family == "efficientnet":  # swish, squeeze-and-excitation (GAP + Reshape + Multiply), Rescaling,
        # Normalization, Add
        module = _private(lib, "efficientnet")
        blocks = [dict(module.DEFAULT_BLOCKS_ARGS[0]), dict(module.DEFAULT_BLOCKS_ARGS[1], repeats=2)]
        return module.EfficientNet(0.25, 1.0, 32, blocks_args=blocks, include_top=False, weights=None,
                                   input_shape=IMAGE)
    elif family == "nasnet":  # SeparableConv2D, Concatenate, Add, ZeroPadding2D, Cropping2D
        full = _private(lib, "nasnet").NASNet(IMAGE, penultimate_filters=96, num_blocks=1, stem_block_filters=8,
                                              include_top=False, weights=None)
        cut = "reduction_concat_stem_1"
    else:
        raise ValueError(family)
    return lib.Model(full.input, full.get_layer(cut).output, name=f"{family}_{cut}")


def _private(lib, module):
    if lib is keras3:
        from keras.src.applications import efficientnet, nasnet  # the width knobs are not public
    else:
        from tf_keras.src.applications import efficientnet, nasnet
    return {"efficientnet": efficientnet, "nasnet": nasnet}[module]


def _cnn(family, lib, nested):
    lib.utils.set_random_seed(0)
    backbone = _backbone(family, lib)
    if nested:  # the usual transfer-learning shape: backbone used as a layer
        return lib.Sequential([lib.Input(IMAGE), backbone, lib.layers.GlobalAveragePooling2D(),
                               lib.layers.Dense(CLASSES)], name=f"{family}_classifier")
    head = lib.layers.Dense(CLASSES)(lib.layers.GlobalAveragePooling2D()(backbone.output))
    return lib.Model(backbone.input, head, name=f"{family}_flat")


# ----------------------------------------------------------------------------- small models


def _inline_ops(lib):
    inputs = lib.Input((64,))
    h = lib.layers.Dense(64, activation="relu")(inputs)
    h = keras3.ops.relu(h[:, :48]) * 2.0
    return lib.Model(inputs, lib.layers.Dense(4)(h), name="inline_ops")


def _text(lib):
    return lib.Sequential([lib.Input((20,), dtype="int32"), lib.layers.Embedding(100, 8),
                           lib.layers.GlobalAveragePooling1D(), lib.layers.Dense(16, activation="relu"),
                           lib.layers.Dense(4)], name="text")


def _tabular(lib, head):
    out = lib.layers.Dense(1, activation="sigmoid") if head == "sigmoid" else lib.layers.Dense(3, activation="softmax")
    return lib.Sequential([lib.Input((12,)), lib.layers.Dense(16, activation="relu"), out], name=f"tabular_{head}")


def _recurrent(lib, cell):
    return lib.Sequential([lib.Input((8, 8)), getattr(lib.layers, cell)(16), lib.layers.Dense(4)], name=cell.lower())


def _builders():
    out = {}
    for family in ("mobilenetv2", "efficientnet", "nasnet"):
        # Keras 3 with the backbone nested in a Sequential classifier; tf_keras flat (Functional).
        out[f"{family}-nested/keras3"] = (lambda f=family: _cnn(f, keras3, nested=True), "image")
        out[f"{family}/tf_keras"] = (lambda f=family: _cnn(f, keras, nested=False), "image")
    out["inline-ops/keras3"] = (lambda: _inline_ops(keras3), "vector64")
    for lib_name, lib in (("keras3", keras3), ("tf_keras", keras)):
        out[f"text/{lib_name}"] = (lambda lib=lib: _text(lib), "tokens")
        out[f"tabular-sigmoid/{lib_name}"] = (lambda lib=lib: _tabular(lib, "sigmoid"), "tabular")
        out[f"tabular-softmax/{lib_name}"] = (lambda lib=lib: _tabular(lib, "softmax"), "tabular")
        out[f"lstm/{lib_name}"] = (lambda lib=lib: _recurrent(lib, "LSTM"), "sequence")
        out[f"gru/{lib_name}"] = (lambda lib=lib: _recurrent(lib, "GRU"), "sequence")
    return out


BUILDERS = _builders()
MODELS = tuple(BUILDERS)
CNN_MODELS = tuple(name for name in MODELS if BUILDERS[name][1] == "image")
SMALL_MODELS = tuple(name for name in MODELS if name not in CNN_MODELS)

# ----------------------------------------------------------------------------- cached models and data


@functools.cache
def model(name):
    """The model as its author built it (Keras 3 or tf_keras), built once per process."""
    return BUILDERS[name][0]()


@functools.cache
def converted(name):
    """The flat tf_keras model every mechanism receives (``check_model``: converted, inlined)."""
    return check_model(model(name))


def _inputs(kind, n, seed):
    rng = np.random.default_rng(seed)
    if kind == "image":
        return rng.random((n, *IMAGE), dtype=np.float32)
    if kind == "tokens":
        return rng.integers(0, 100, size=(n, 20)).astype(np.int32)
    if kind == "sequence":
        return rng.normal(size=(n, 8, 8)).astype(np.float32)
    return rng.normal(size=(n, 64 if kind == "vector64" else 12)).astype(np.float32)


@functools.cache
def data(name, seed=0):
    """``(x, y)``: ``N`` inputs and the model's own predicted labels (so clean accuracy is 1);
    for a one-unit sigmoid head, balanced 0/1 labels (an untrained head may predict one class)."""
    x = _inputs(BUILDERS[name][1], N, seed)
    out = predict(converted(name), x)
    y = np.arange(N) % 2 if out.shape[-1] == 1 else out.argmax(-1)
    return x, y.astype(np.int64)


def predict(m, x):
    """Inference outputs as numpy (``training=False``)."""
    return np.asarray(m(x, training=False))


def assert_close(actual, expected, rel=1e-5, what="outputs"):
    """``max |actual - expected| <= rel * max(1, max |expected|)``."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected))))
    diff = float(np.max(np.abs(actual - expected)))
    assert diff <= rel * scale, f"{what} differ by {diff:.3g} (allowed {rel * scale:.3g})"
    return diff


def _compile(m):
    units = int(m.outputs[0].shape[-1])
    if units == 1:
        loss = keras.losses.BinaryCrossentropy()
    else:
        probabilities = getattr(m.layers[-1], "activation", None) is keras.activations.softmax
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    m.compile(optimizer=keras.optimizers.SGD(1e-3), loss=loss)
    return m


def _strip_equal(wrapped, x):
    """strip(wrapped) computes the wrapped model's inference outputs (rel 1e-5)."""
    return assert_close(predict(strip(wrapped), x), predict(wrapped, x), what="strip() vs wrapped")


def _tmp(suffix):
    fd, path = tempfile.mkstemp(suffix=suffix, dir=_tmpdir())
    os.close(fd)
    os.remove(path)
    return path


@functools.cache
def _tmpdir():
    return tempfile.mkdtemp(prefix="tfsafe-conformance-")


def clear():
    """Forget every cached model and data set and delete the exported files."""
    if _tmpdir.cache_info().currsize:
        shutil.rmtree(_tmpdir(), ignore_errors=True)
    for cached in (model, converted, data, pruned, _tmpdir):
        cached.cache_clear()


# ----------------------------------------------------------------------------- cells


def cell_to_tf_keras(name):
    original, x = model(name), data(name)[0]
    result = tfsafe.to_tf_keras(original)
    if original is result:
        return "tf_keras already"
    diff = assert_close(predict(result, x), np.asarray(original(x, training=False)), what="to_tf_keras")
    return f"max diff {diff:.1e}"


@functools.cache
def pruned(name):
    """``prune_safe(model, 0.5)`` after one DynamicSparsity update (cached: save/load reuses it)."""
    p = _compile(prune_safe(converted(name), 0.5))
    wrappers = prunable_wrappers(p)
    before = [w.mask_counts()[0] for w in wrappers]
    callback = DynamicSparsity(update_every=1, drop_fraction=0.3, end_step=100)
    callback.set_model(p)
    callback.on_train_begin()
    callback.on_train_batch_end(0)  # what Model.fit calls after a step
    callback.on_train_end()
    assert len(callback.history) == 1 and callback.history[0]["changed"] > 0, callback.history
    assert [w.mask_counts()[0] for w in wrappers] == before, "DynamicSparsity changed the active count"
    return p


def cell_prune_safe(name):
    p = pruned(name)
    _strip_equal(p, data(name)[0])
    active, total = (sum(c) for c in zip(*(w.mask_counts() for w in prunable_wrappers(p))))
    assert abs(1 - active / total - 0.5) < 0.01
    return f"{len(prunable_wrappers(p))} layers at 50%"


def cell_quantize_learnable(name):
    q = quantize_learnable(converted(name))
    _strip_equal(q, data(name)[0])
    return "strip exact"


def cell_linearize(name):
    m, x = converted(name), data(name)[0]
    total = relu_count(m)
    if total == 0:
        linearize(m)  # must raise the one-line "no ReLU" error (a documented limit)
    budget = max(1, total // 10)
    lin = linearize(m, relu_budget=budget, x=x)
    assert relu_count(lin) == budget, (relu_count(lin), budget)
    stripped = strip(lin)
    assert relu_count(stripped) == budget
    assert_close(predict(stripped, x), predict(lin, x), what="strip() vs linearized")
    return f"{total} -> {budget} ReLUs"


def cell_factorize(name):
    m, x = converted(name), data(name)[0]
    f = factorize(m)
    assert_close(predict(f, x), predict(m, x), what="factorize() vs model")
    _strip_equal(f, x)
    return "same function"


def cell_save_load(name):
    x = data(name)[0]
    p = pruned(name)
    path = tfsafe.save_model(p, _tmp(".keras"))
    assert_close(predict(tfsafe.load_model(path), x), predict(p, x), what="tfsafe wrappers reloaded")
    # TF-MOT's documented pattern for models with layers it cannot wrap: prune the prunable ones.
    tfmot_wrapped = keras.models.clone_model(converted(name), clone_function=lambda layer: (
        tfmot.sparsity.keras.prune_low_magnitude(layer) if is_prunable(layer) else layer))
    path = _tmp(".keras")
    tfmot_wrapped.save(path)
    loaded = tfsafe.load_model(path)
    assert_close(predict(strip(loaded), x), predict(tfmot_wrapped, x), what="TF-MOT checkpoint reloaded")
    return "tfsafe + TF-MOT"


def cell_to_tflite_int8(name):
    m, (x, y) = converted(name), data(name)
    # Untrained zoo models have many near-ties: on 32 examples one flip is a 3-point accuracy change.
    result = tflite_export.to_tflite(m, _tmp(".tflite"), "int8", x, verify=(x, y), min_agreement=0.75,
                                     max_accuracy_drop=0.1, sparsity=False)
    return f"agreement {result.parity.top1_agreement:.2f}"


def cell_to_onnx(name):
    m, (x, y) = converted(name), data(name)
    result = tflite_export.to_onnx(m, _tmp(".onnx"), verify=(x, y))
    return f"agreement {result.parity.top1_agreement:.2f}"


def cell_audit_membership(name):
    m, (xm, ym), (xn, yn) = converted(name), data(name, 0), data(name, 1)
    audit = audit_membership(m, (xm, ym), (xn, yn), attacks=("threshold",))
    auc = audit.worst["auc"]
    assert 0.0 <= auc <= 1.0
    return f"worst AUC {auc:.2f}"


def cell_pgd_attack(name):
    m, (x, y) = converted(name), data(name)
    x, y = x[:8], y[:8]
    eps = 0.03
    adv = pgd_attack(m, x, y, eps=eps, steps=3, clip=None)
    assert adv.shape == x.shape and float(np.max(np.abs(adv - x))) <= eps + 1e-6
    return "in the eps ball"


CELLS = {
    "to_tf_keras": cell_to_tf_keras,
    "prune_safe": cell_prune_safe,
    "quantize_learnable": cell_quantize_learnable,
    "linearize": cell_linearize,
    "factorize": cell_factorize,
    "save_load": cell_save_load,
    "to_tflite_int8": cell_to_tflite_int8,
    "to_onnx": cell_to_onnx,
    "audit_membership": cell_audit_membership,
    "pgd_attack": cell_pgd_attack,
}

# Cells where the mechanism does not apply or the runtime truly cannot:
# (model regex, cell) -> (error class, message regex, why).
LIMITS = {
    (r"(efficientnet.*|lstm|gru)/.*", "linearize"): (
        UnsupportedModelError, r"has no ReLU to linearize",
        "linearize: the model has no ReLU (swish / tanh activations), so there is nothing to linearize"),
    (r"text/.*", "pgd_attack"): (
        UnsupportedModelError, r"takes int32 inputs \(e\.g\. token ids\), which have no gradient",
        "pgd_attack: token ids (int32 inputs) have no gradient; attack the embeddings instead"),
}

def limit_for(name, cell):
    """The documented limit of a cell, or None."""
    for (pattern, limited_cell), value in LIMITS.items():
        if limited_cell == cell and re.fullmatch(pattern, name):
            return value
    return None


def run(name, cell):
    """``("ok", value)`` or ``("limit", first error line)``; other failures propagate."""
    try:
        return "ok", CELLS[cell](name)
    except TfsafeError as err:
        if limit_for(name, cell) is None:
            raise
        return "limit", str(err).splitlines()[0]


def cell_params(models):
    """One pytest param per (model, cell)."""
    for name in models:
        for cell in CELLS:
            yield pytest.param(name, cell, id=f"{name}:{cell}")


def check_cell(name, cell):
    """Run one cell: the right value, or exactly its documented one-line limit."""
    limit = limit_for(name, cell)
    if limit is None:
        assert CELLS[cell](name)
        return
    error_class, pattern, _why = limit
    with pytest.raises(error_class, match=pattern) as info:
        CELLS[cell](name)
    assert "\n" not in str(info.value).strip(), "a limit is one clear line"
