"""RLNet: robust loss with dual BN routing, the three-stage pipeline on digits, bad input."""

import numpy as np
import pytest
from conftest import clone

import tfsafe.methods
from tfsafe._keras import keras
from tfsafe.compress.dual_bn import bn_route, dual_bn_layers, with_inference_path
from tfsafe.compress.linearization import linearize, mask_layers
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.methods.rlnet import (
    RobustLoss,
    augment_images,
    finetune_student,
    relu_activations_model,
    rlnet,
    rlnet_cnn,
    train_robust_teacher,
)
from tfsafe.metrics import relu_count
from tfsafe.models import accuracy, small_cnn
from tfsafe.safety.robust_accuracy import adversarial_accuracy
from tfsafe.splits import MembershipSplits


@pytest.fixture(scope="module")
def bn_standard(digits):
    """A Conv-BN-ReLU CNN trained on digits with plain cross-entropy."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = rlnet_cnn((8, 8, 1), 10, dual_bn=False, name="standard")
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return model


def test_augment_images_stays_in_range_and_changes_inputs(digits):
    (x, _), _ = digits
    out = augment_images(x[:64]).numpy()
    assert out.shape == x[:64].shape and out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - x[:64]).mean() > 0.01


@pytest.fixture(scope="module")
def pipeline(bn_standard, digits):
    """One short RLNet run (all three stages) shared by the tests below."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    budget = relu_count(bn_standard) // 10
    return rlnet(bn_standard, x[:640], y[:640], relu_budget=budget, eps=0.1, teacher_epochs=2, search_epochs=3,
                 finetune_epochs=1, batch_size=64, pgd_steps=3, penalty=1e-2)


def test_rlnet_meets_budget_with_frozen_masks(pipeline, bn_standard, digits):
    _, (xt, yt) = digits
    student = pipeline.student
    budget = relu_count(bn_standard) // 10
    assert pipeline.relu_count == relu_count(student) == budget
    assert pipeline.relu_reduction == pytest.approx(10.0, rel=0.01)
    assert pipeline.search_reached and pipeline.search_history
    assert all(m.frozen for m in mask_layers(student)) and len(dual_bn_layers(student)) == 3
    assert dual_bn_layers(bn_standard) == []  # the input model is not modified
    assert accuracy(student, xt, yt) > 0.85


def test_teacher_paths_trained_separately_and_more_robust(pipeline, bn_standard, digits):
    _, (xt, yt) = digits
    teacher = pipeline.teacher
    for layer in dual_bn_layers(teacher):
        assert float(layer.route.numpy()) == 0.0  # left on the deployed (clean) path
        # both paths started from the standard model's BN; each then saw its own batches
        assert not np.allclose(layer.bn_clean.moving_mean.numpy(), layer.bn_adversarial.moving_mean.numpy())
    pgd = {name: adversarial_accuracy(m, xt[:150], yt[:150], 0.1, steps=10)
           for name, m in (("standard", bn_standard), ("teacher", teacher))}
    assert pgd["teacher"] > pgd["standard"]  # adversarial training did something


def test_student_paths_round_trip_and_strip(pipeline, digits, tmp_path):
    _, (xt, _) = digits
    student = pipeline.student
    adv_path = with_inference_path(student, "adversarial")
    with bn_route(student, "adversarial"):
        np.testing.assert_allclose(adv_path(xt[:8]).numpy(), student(xt[:8]).numpy(), atol=1e-5)
    path = str(tmp_path / "student.keras")
    student.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(xt[:16]).numpy(), student(xt[:16]).numpy(), atol=1e-5)
    plain = strip(student)
    assert relu_count(plain) == pipeline.relu_count
    assert not dual_bn_layers(plain)
    np.testing.assert_allclose(plain(xt[:16]).numpy(), student(xt[:16]).numpy(), atol=1e-4)


def test_robust_loss_routes_each_path_and_restores(pipeline, digits):
    (x, y), _ = digits
    model = with_inference_path(pipeline.teacher, "clean")  # a copy
    layer = dual_bn_layers(model)[0]
    clean0, adv0 = layer.bn_clean.moving_mean.numpy().copy(), layer.bn_adversarial.moving_mean.numpy().copy()
    loss = RobustLoss(eps=0.1, pgd_steps=2, augment=False)(model, x[:32], y[:32])
    assert np.isfinite(float(loss))
    assert not np.allclose(layer.bn_clean.moving_mean.numpy(), clean0)
    assert not np.allclose(layer.bn_adversarial.moving_mean.numpy(), adv0)
    assert float(layer.route.numpy()) == 0.0
    adv1 = layer.bn_adversarial.moving_mean.numpy().copy()
    RobustLoss(adversarial=False, augment=False)(model, x[:32], y[:32])  # the non-robust baseline's loss
    np.testing.assert_array_equal(layer.bn_adversarial.moving_mean.numpy(), adv1)


def test_relu_maps_pair_teacher_and_student(bn_standard):
    student = linearize(bn_standard)
    t_maps, s_maps = relu_activations_model(bn_standard), relu_activations_model(student)
    assert [t.shape.as_list() for t in t_maps.outputs] == [s.shape.as_list() for s in s_maps.outputs]
    assert len(t_maps.outputs) == 1 + 3


def test_bad_input(bn_standard, digits):
    (x, y), _ = digits
    total = relu_count(bn_standard)
    with pytest.raises(InputError, match="larger than the model's ReLU count"):
        rlnet(bn_standard, x, y, relu_budget=total + 1)
    with pytest.raises(InputError, match="relu_budget"):
        rlnet(bn_standard, x, y, relu_budget=0)
    with pytest.raises(UnsupportedModelError, match="no BatchNormalization"):
        train_robust_teacher(small_cnn(), x[:32], y[:32], epochs=1)
    with pytest.raises(UnsupportedModelError, match="no DualBatchNormalization"):
        rlnet(bn_standard, x, y, relu_budget=10, teacher=clone(bn_standard))
    with pytest.raises(UnsupportedModelError, match="relaxed"):
        finetune_student(linearize(bn_standard), bn_standard, x[:32], y[:32])
    with pytest.raises(InputError, match="eps"):
        RobustLoss(eps=0.0)
    no_relu = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(UnsupportedModelError, match="no ReLU"):
        rlnet(no_relu, x, y, relu_budget=1)


def test_augmentation_of_non_image_data_is_one_line():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 12)).astype("float32"), rng.integers(0, 2, 64)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dense(2, activation="softmax")])
    splits = MembershipSplits.from_arrays(train=(x[:48], y[:48]), test=(x[48:], y[48:]))
    with pytest.raises(InputError, match=r"augment=True .* shape \(48, 12\)\. Pass augment=False"):
        tfsafe.methods.get("rlnet", eps=0.1).compress(model, splits, verbose=0)
