"""MIA-SafeCompress: TM-score, candidate selection, the loop on digits, checkpoint / resume."""

import json

import numpy as np
import pytest
from conftest import clone, compile_classifier, member_loss

from tfsafe._keras import keras
from tfsafe.compress.dynamic_sparsity import read_masks, read_weights
from tfsafe.compress.pruning import prunable_wrappers, prune_safe
from tfsafe.errors import InputError
from tfsafe.methods.safecompress import (
    AdversarialRegularization,
    CandidateSelection,
    SafeCompress,
    _kept_steps,
    tm_score,
)
from tfsafe.metrics import sparsity
from tfsafe.models import accuracy
from tfsafe.splits import MembershipSplits


def test_tm_score_formula():
    assert tm_score(0.9, 0.5) == pytest.approx(0.9)
    assert tm_score(0.9, 0.4) == pytest.approx(0.9)  # below chance is no advantage
    assert tm_score(0.9, 0.6, mia_weight=2.0) == pytest.approx(0.9 - 2.0 * 0.2)
    assert tm_score(0.8, 0.55, 1.0, {"pgd": 0.5}, {"pgd": 0.4}) == pytest.approx(0.8 - 0.1 + 0.2)


class _RecordingTests:
    """A safety test whose scores are fixed in advance; it records each candidate's state."""

    def __init__(self, model, scores, accuracies=None):
        self.model, self.scores, self.seen, self.accepted = model, list(scores), [], []
        self.accuracies = list(accuracies or [0.0] * len(self.scores))

    def __call__(self, model):
        wrappers = prunable_wrappers(self.model)
        self.seen.append((read_masks(wrappers), read_weights(wrappers)))
        return {"val_accuracy": self.accuracies[len(self.seen) - 1], "tm_score": self.scores[len(self.seen) - 1]}

    def accept(self, index):
        self.accepted.append(index)


def test_selection_keeps_the_best_candidate_state(trained_cnn, digits):
    (x, y), _ = digits
    model = compile_classifier(prune_safe(clone(trained_cnn), 0.9), lr=1e-3)
    # Two rounds of three candidates, then the final state (tested by restore_best).
    tests = _RecordingTests(model, [0.1, 0.7, 0.3, 0.9, 0.2, 0.4, 0.5])
    selection = CandidateSelection(tests, num_candidates=3, update_every=4, end_step=9, seed=0)
    start_masks = read_masks(prunable_wrappers(model))
    # 4 plain steps, round 1 (12 batches), round 2 (12 batches), then plain steps.
    model.fit(x[:32 * 30], y[:32 * 30], epochs=1, batch_size=32, verbose=0, callbacks=[selection])
    assert [r["selected"] for r in selection.history] == [1, 0]
    assert tests.accepted == [1, 0, -1]
    assert [r["step"] for r in selection.history] == [4, 8]
    assert all(r["candidates"][r["selected"]]["tm_score"] == max(c["tm_score"] for c in r["candidates"])
               for r in selection.history)
    # The three candidates of a round really differ, and the chosen one's masks were kept.
    first_round = [masks for masks, _ in tests.seen[:3]]
    assert not np.array_equal(first_round[0][2], first_round[1][2])
    assert not np.array_equal(first_round[1][2], start_masks[2])
    # restore_best: the final state (0.5) loses to round 2's winner (0.9), whose state comes back.
    assert selection.final["kept"] == 1 and selection.final["final"]["tm_score"] == 0.5
    second_chosen_masks, second_chosen_weights = tests.seen[3]
    for mask, weight, layer in zip(second_chosen_masks, second_chosen_weights, prunable_wrappers(model)):
        np.testing.assert_array_equal(layer.masks[0].numpy(), mask)
        np.testing.assert_allclose(layer.pruned_weights[0].numpy() * mask, weight)
    assert int(model.optimizer.iterations.numpy()) == 4 + 4 + 4
    json.dumps(selection.history)


@pytest.mark.parametrize("max_accuracy_drop, kept", [(None, 0), (0.02, 2), (0.0, "final")])
def test_max_accuracy_drop_keeps_the_safest_state_near_the_best_accuracy(trained_cnn, digits, max_accuracy_drop,
                                                                         kept):
    (x, y), _ = digits
    model = compile_classifier(prune_safe(clone(trained_cnn), 0.9), lr=1e-3)
    # Three one-candidate rounds, then the final state: safer (higher TM) early, more accurate late.
    tests = _RecordingTests(model, [0.40, 0.30, 0.20, 0.10], accuracies=[0.50, 0.70, 0.80, 0.81])
    selection = CandidateSelection(tests, num_candidates=1, update_every=4, end_step=13, seed=0,
                                   max_accuracy_drop=max_accuracy_drop)
    model.fit(x[:32 * 24], y[:32 * 24], epochs=1, batch_size=32, verbose=0, callbacks=[selection])
    assert len(selection.history) == 3 and selection.final["kept"] == kept
    note = _kept_steps(selection.final["kept"], selection)["note"]
    assert ("validation accuracy >=" in note) == (max_accuracy_drop is not None)
    if kept == 2:
        assert selection.final["accuracy_floor"] == pytest.approx(0.79)
        assert note.startswith("kept round 2's winner") and "validation accuracy >= 0.790" in note
        for mask, layer in zip(tests.seen[2][0], prunable_wrappers(model)):
            np.testing.assert_array_equal(layer.masks[0].numpy(), mask)


def test_safecompress_on_digits_with_audit_and_resume(trained_cnn, digits_splits, tmp_path):
    compressor = SafeCompress(target_sparsity=0.9, num_candidates=2, update_every=5, attack_size=150,
                              attack_epochs=2, learning_rate=3e-3, seed=0)
    # 19 batches per epoch; rounds at accepted steps 5, 10, 15 (10 batches each).
    result = compressor.fit(clone(trained_cnn), digits_splits, epochs=2, batch_size=32,
                            checkpoint_dir=str(tmp_path))
    model = result.model
    total = sum(layer.mask_counts()[1] for layer in prunable_wrappers(model))
    assert sum(layer.mask_counts()[0] for layer in prunable_wrappers(model)) == round(0.1 * total)
    assert len(result.history) >= 2
    for r in result.history:
        scores = [c["tm_score"] for c in r["candidates"]]
        assert r["selected"] == int(np.argmax(scores))
        for c in r["candidates"]:
            assert c["tm_score"] == pytest.approx(tm_score(c["val_accuracy"], c["attack_accuracy"]))
            assert 0.0 <= c["attack_accuracy"] <= 1.0
    json.dumps(result.to_dict())
    assert sparsity(result.stripped) >= 0.9 - 1e-6
    assert accuracy(result.stripped, *digits_splits.test) > 0.7
    audit = result.audit(digits_splits, attacks=("threshold",))
    assert 0.0 <= audit.worst["auc"] <= 1.0 and audit.n_nonmembers == len(digits_splits.nonmembers[0])
    # Export: the wrapped model goes through tflite_export (stripped there) as int8.
    from tflite_export.convert import to_tflite

    exported = to_tflite(result.model, str(tmp_path / "safecompress.tflite"), "int8", digits_splits.train[0],
                         verify=digits_splits.test, min_agreement=0.9)
    assert exported.input["dtype"] == "int8" and exported.parity.top1_agreement >= 0.9
    # The finished run resumes without redoing anything; other settings are refused.
    state = json.loads((tmp_path / "train" / "rounds.json").read_text())
    assert len(state["history"]) == len(result.history)
    again = compressor.fit(trained_cnn, digits_splits, epochs=2, batch_size=32, checkpoint_dir=str(tmp_path),
                           resume=True)
    assert again.history == result.history
    with pytest.raises(InputError, match="other settings.*epochs"):
        compressor.fit(trained_cnn, digits_splits, epochs=4, batch_size=32, checkpoint_dir=str(tmp_path),
                       resume=True)


class _KillAfter(keras.callbacks.Callback):
    def __init__(self, batches):
        super().__init__()
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            raise KeyboardInterrupt("killed mid-fit")


def test_a_kill_inside_the_training_stage_resumes_from_the_last_round(trained_cnn, digits_splits, tmp_path):
    method = SafeCompress(target_sparsity=0.8, num_candidates=2, update_every=2, attack_size=60, attack_epochs=1,
                          epochs=1, batch_size=64)
    # 10 batches; rounds until accepted step 4: one round at step 2 (4 batches), then the kill.
    with pytest.raises(KeyboardInterrupt):
        method.compress(clone(trained_cnn), digits_splits, callbacks=[_KillAfter(7)], checkpoint_dir=tmp_path,
                        verbose=0)
    saved = json.loads((tmp_path / "train" / "rounds.json").read_text())
    assert len(saved["history"]) == 1 and saved["step"] == 4
    result = method.compress(clone(trained_cnn), digits_splits, checkpoint_dir=tmp_path, resume=True, verbose=0)
    assert result.history["train"][0] == saved["history"][0]  # the finished round was kept, not redone
    assert result.selection["checks"][0]["round"] == 0


def test_adversarial_regularization_trains_with_fit(trained_cnn, digits_splits):
    model = prune_safe(clone(trained_cnn), 0.8)
    trainer = AdversarialRegularization(model, digits_splits.reference, adversarial_weight=1.0)
    trainer.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    (x, y) = digits_splits.train
    before = accuracy(model, *digits_splits.test)
    logs = trainer.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0).history
    assert {"privacy_loss", "attack_loss", "accuracy"} <= set(logs)
    assert np.isfinite(logs["attack_loss"][0]) and logs["privacy_loss"][0] > 0
    assert accuracy(model, *digits_splits.test) > before  # the classifier (inside) was trained


def test_bad_input(digits_splits, trained_cnn):
    with pytest.raises(InputError, match="target_sparsity"):
        SafeCompress(target_sparsity=1.0)
    with pytest.raises(InputError, match="safety_tests"):
        SafeCompress(safety_tests=[object()])
    with pytest.raises(InputError, match="num_candidates"):
        CandidateSelection(lambda m: {"tm_score": 0.0}, num_candidates=0)
    bad = type(digits_splits)(train=(digits_splits.train[0][:, :4], digits_splits.train[1]),
                              validation=digits_splits.validation, nonmembers=digits_splits.nonmembers,
                              test=digits_splits.test, reference=digits_splits.reference, indices={})
    with pytest.raises(InputError, match="shape"):
        SafeCompress().fit(trained_cnn, bad, epochs=1)


def test_relax_alpha_keeps_the_members_loss_near_alpha(memorizer):
    dense, splits = memorizer
    losses = {}
    for alpha in (None, 1.0):
        method = SafeCompress(target_sparsity=0.5, epochs=12, batch_size=64, learning_rate=1e-2, num_candidates=1,
                              mia_weight=0.0, entropy_weight=0.0, relax_alpha=alpha)
        losses[alpha] = member_loss(method.compress(dense, splits, seed=0, verbose=0).stripped, splits)
    assert losses[None] < 0.3
    assert 0.6 < losses[1.0] < 1.3
    with pytest.raises(InputError, match="relax_alpha must be > 0"):
        SafeCompress(relax_alpha=-1.0)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_safecompress_reads_probability_heads(head):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    keras.utils.set_random_seed(0)
    top = keras.layers.Dense(1, activation="sigmoid") if head == "sigmoid" else keras.layers.Dense(2, activation=head)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), top])
    splits = MembershipSplits.from_arrays(train=(x[:160], y[:160]), test=(x[200:], y[200:]),
                                          validation=(x[160:200], y[160:200]), reference=(x[200:], y[200:]))
    result = SafeCompress(target_sparsity=0.5, epochs=15, batch_size=16, learning_rate=1e-2, update_every=5,
                          attack_size=20, attack_epochs=1, relax_alpha=0.2).compress(model, splits, seed=0, verbose=0)
    assert result.model.loss.from_logits is False  # the head's probabilities are not taken for logits
    scores = result.stripped(x[200:]).numpy()
    predicted = scores[:, 0] > 0.5 if head == "sigmoid" else scores.argmax(axis=1)
    assert np.mean(predicted == y[200:]) > 0.8
