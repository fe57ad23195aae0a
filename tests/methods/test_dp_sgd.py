"""DP-SGD as a method: the accountant's epsilon, a registry run on digits, DP + prune, bad input."""

import doctest
import re
import sys

import numpy as np
import pytest

import tfsafe.methods
import tfsafe.methods.dp_sgd
from tfsafe._keras import keras, tfmot
from tfsafe.data import MembershipSplits
from tfsafe.errors import InputError
from tfsafe.methods.dp_sgd import DPSGD, dp_sgd_epsilon, dp_sgd_epsilon_once_per_epoch
from tfsafe.metrics import weight_stats
from tfsafe.recipes import load_recipe
from tfsafe.report import SafetyReport

sys.skip_tf_privacy_import = True
from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import (  # noqa: E402
    compute_dp_sgd_privacy_statement,
)


def _statement_epsilons(n, batch, epochs, noise, delta, microbatched):
    """(Poisson, once-per-epoch) epsilons parsed from tensorflow-privacy's printed statement."""
    text = compute_dp_sgd_privacy_statement(n, batch, epochs, noise, delta, used_microbatching=microbatched)
    once = float(re.search(r"once per epoch:\s+([0-9.]+)", text).group(1))
    poisson = float(re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", text).group(1))
    return poisson, once


@pytest.mark.parametrize("microbatched", [False, True])
def test_epsilon_matches_tensorflow_privacy_statement(microbatched):
    # N divisible by the batch: the method's steps (epochs * N // batch) are the statement's.
    n, batch, epochs, noise, delta = 2400, 48, 10, 1.3, 1e-5
    poisson, once = _statement_epsilons(n, batch, epochs, noise, delta, microbatched)
    steps = epochs * (n // batch)
    assert dp_sgd_epsilon(n, batch, noise, steps, delta, microbatched) == pytest.approx(poisson, abs=6e-4)
    assert dp_sgd_epsilon_once_per_epoch(epochs, noise, delta, microbatched) == pytest.approx(once, abs=6e-4)


def test_epsilon_falls_with_more_noise_and_rises_with_more_steps():
    eps = [dp_sgd_epsilon(2400, 48, noise, 500, 1e-5) for noise in (0.6, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert dp_sgd_epsilon(2400, 48, 1.0, 1000, 1e-5) > eps[1]
    assert dp_sgd_epsilon(2400, 48, 0.0, 500, 1e-5) == float("inf")


@pytest.fixture(scope="module")
def splits(digits):
    (x, y), _ = digits
    return MembershipSplits(train=(x[:256], y[:256]), validation=(x[256:320], y[256:320]),
                            nonmembers=(x[320:360], y[320:360]), test=(x[360:400], y[360:400]), reference=(),
                            indices={k: np.arange(0) for k in ("train", "validation", "nonmembers", "test",
                                                               "reference")})


def test_one_epoch_through_the_registry_reports_the_accountants_epsilon(trained_cnn, splits):
    method = tfsafe.methods.get("dp_sgd", epochs=1, batch_size=32, noise_multiplier=1.0)
    result = method.compress(trained_cnn, splits, verbose=0)
    info, privacy = result.info, result.info["privacy"]
    assert privacy["train_steps"] == 8 and privacy["prune_steps"] == 0 and info["steps"] == 8
    assert info["delta"] == 1e-5 and privacy["sampling_rate"] == 32 / 256 and privacy["noise_multiplier"] == 1.0
    assert info["epsilon"] == pytest.approx(dp_sgd_epsilon(256, 32, 1.0, 8, 1e-5))
    assert privacy["optimizer"] == "DPKerasAdamOptimizer" and "RDP" in privacy["accountant"]
    assert "fresh initialisation" in privacy["guarantee"] and info["target_sparsity"] is None
    # from_scratch: the trained weights were re-initialised, so one noisy epoch is far from them.
    assert not np.allclose(result.model.get_weights()[0], trained_cnn.get_weights()[0])
    assert result.selection["kept"] == "final" and result.selection["early"] is False
    assert result.stripped.predict(splits.test[0], verbose=0).shape == (40, 10)
    # The compress report shows the run's epsilon and delta in the table and what they cover.
    report = SafetyReport("dp", dataset="digits")
    report.add_model("dp_sgd", "compressed", accuracy=0.5, method_info=result.info, selection=result.selection)
    md = report.to_markdown()
    assert f"| dp_sgd | compressed | 0.5000 | {info['epsilon']:.2f} | 1.0e-05 |" in md
    assert f"- **dp_sgd**: DP-SGD: epsilon = {info['epsilon']:.2f} at delta = 1.0e-05 (noise multiplier 1, " in md
    assert "8 steps); example-level (epsilon, delta)-DP of all DP steps from a fresh initialisation" in md


def test_fine_tuning_says_epsilon_covers_only_the_fine_tuning(trained_cnn, splits):
    result = DPSGD(epochs=1, batch_size=64, noise_multiplier=2.0, from_scratch=False, delta=1e-3).compress(
        trained_cnn, splits, verbose=0)
    assert "only the DP fine-tuning" in result.info["privacy"]["guarantee"] and result.info["delta"] == 1e-3
    assert result.info["epsilon"] == pytest.approx(dp_sgd_epsilon(256, 64, 2.0, 4, 1e-3))


def test_dp_plus_prune_reaches_the_target_and_accounts_every_step(trained_cnn, splits):
    method = DPSGD(epochs=1, batch_size=32, noise_multiplier=1.0, target_sparsity=0.75, prune_epochs=2,
                   optimizer="sgd", learning_rate=0.1, num_microbatches=8)
    result = method.compress(trained_cnn, splits, verbose=0)
    info, privacy = result.info, result.info["privacy"]
    assert privacy["train_steps"] == 8 and privacy["prune_steps"] == 16 and info["steps"] == 24
    # 8 microbatches of 4 examples: the sensitivity doubles, the accountant sees noise 0.5.
    assert privacy["microbatched"] and privacy["optimizer"] == "DPKerasSGDOptimizer"
    assert info["epsilon"] == pytest.approx(dp_sgd_epsilon(256, 32, 0.5, 24, 1e-5))
    assert info["epsilon"] > dp_sgd_epsilon(256, 32, 0.5, 8, 1e-5)
    kernels = [s for s in weight_stats(result.stripped) if s["kind"] == "kernel"]
    assert len(kernels) == 4  # every conv and dense kernel of small_cnn, each pruned to the target
    for stat in kernels:
        assert 1 - stat["nonzeros"] / stat["params"] == pytest.approx(0.75, abs=0.01), stat["layer"]


def test_recipe_params_are_the_constructor_arguments():
    params = load_recipe("dp_sgd")["params"]
    assert params == DPSGD().get_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"noise_multiplier": -0.5}, "noise_multiplier must be >= 0"),
    ({"l2_norm_clip": 0}, "l2_norm_clip must be > 0"),
    ({"batch_size": 64, "num_microbatches": 5}, r"batch_size \(64\) must be divisible by num_microbatches \(5\)"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of 'adam', 'sgd'"),
    ({"delta": 0}, "delta must be > 0"),
    ({"target_sparsity": 1.0}, "target_sparsity"),
])
def test_bad_input_is_one_line(kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        DPSGD(**kwargs)
    assert "\n" not in str(err.value)


def test_too_few_examples_for_a_batch(trained_cnn, splits):
    with pytest.raises(InputError, match="256 examples, fewer than batch_size=512"):
        DPSGD(batch_size=512, epochs=1).compress(trained_cnn, splits, verbose=0)


def test_docstring_examples():
    result = doctest.testmod(tfsafe.methods.dp_sgd, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_dp_sgd_reads_the_head_also_through_prune_wrappers(head):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    top = keras.layers.Dense(1, activation=head) if head == "sigmoid" else keras.layers.Dense(2, activation=head)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), top])
    method = DPSGD(noise_multiplier=0.5, epochs=1, batch_size=32, target_sparsity=0.5, prune_epochs=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    assert method._compile(pruned).loss.get_config()["from_logits"] is False  # read through the wrapper
    splits = MembershipSplits.from_arrays(train=(x[:96], y[:96]), test=(x[96:], y[96:]))
    result = method.compress(model, splits, seed=0, verbose=0)
    assert result.stripped.output_shape == model.output_shape
