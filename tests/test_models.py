import numpy as np
import pytest

import tfsafe
from tfsafe._keras import keras, tf
from tfsafe.errors import InputError
from tfsafe.models import accuracy, ends_with_softmax, lenet, logits_model, predict_logits, predict_proba


def test_trained_fixture_is_accurate(trained_cnn, digits):
    _, (xt, yt) = digits
    assert accuracy(trained_cnn, xt, yt) > 0.9


def test_logits_model_removes_softmax_in_dense_layer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    assert ends_with_softmax(model)
    logits = logits_model(model)(x).numpy()
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), model(x).numpy(), atol=1e-6)
    assert not np.allclose(logits.sum(axis=1), 1.0)


def test_logits_model_removes_softmax_layer_and_keeps_logit_models():
    inputs = keras.Input((4,))
    pre = keras.layers.Dense(3)(inputs)
    model = keras.Model(inputs, keras.layers.Softmax()(pre))
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(predict_proba(model, x), model(x).numpy(), atol=1e-6)
    plain = keras.Model(inputs, pre)
    assert logits_model(plain) is plain
    np.testing.assert_allclose(predict_logits(plain, x), plain(x).numpy(), atol=1e-6)


def test_lenet_has_the_atmc_shape():
    model = lenet()
    assert [l.name for l in model.layers if l.weights] == ["conv1", "conv2", "fc1", "logits"]
    assert model.count_params() == 431080


def test_accuracy_takes_x_y_or_a_split(trained_cnn, digits_splits):
    x, y = digits_splits.test
    assert tfsafe.accuracy(trained_cnn, digits_splits.test) == tfsafe.accuracy(trained_cnn, x, y)
    assert tfsafe.accuracy(trained_cnn, x, y) == float((trained_cnn.predict(x, verbose=0).argmax(1) == y).mean())
    with pytest.raises(InputError, match="labels are missing"):
        tfsafe.accuracy(trained_cnn, x)



def test_small_resnet_is_residual_with_batch_norm_and_prunes_and_strips():
    from tfsafe.compress.pruning import prune_safe
    from tfsafe.compress.strip import strip
    from tfsafe.models import small_resnet
    from tfsafe.pipeline.compress import dense_model

    model = small_resnet((16, 16, 3), 10, filters=(8, 16))
    names = [l.__class__.__name__ for l in model.layers]
    assert model.output_shape == (None, 10) and names.count("Add") == 2 and names.count("BatchNormalization") == 6
    assert model.get_layer("s2b1_proj_conv").strides == (2, 2)  # the downsampling stage's projection shortcut
    assert dense_model("small_resnet", (16, 16, 3), 10).output_shape == (None, 10)  # the recipes' name for it
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 16, 16, 3)).astype("float32")
    pruned = prune_safe(model, 0.5)
    stripped = strip(pruned)
    np.testing.assert_allclose(stripped(x).numpy(), pruned(x).numpy(), atol=1e-4)
    kernels = np.concatenate([l.kernel.numpy().ravel() for l in stripped.layers
                              if isinstance(l, keras.layers.Conv2D)])
    assert 0.4 < np.mean(kernels == 0) < 0.6
