"""Honest comparison pieces: SafeCompress says which state it kept; TF-MOT pruning can stop early."""

import numpy as np
import pytest

import tfsafe.methods
from tfsafe.data import MembershipSplits
from tfsafe.errors import InputError
from tfsafe.metrics import weight_stats


@pytest.fixture(scope="module")
def splits(digits):
    (x, y), _ = digits
    return MembershipSplits(train=(x[:256], y[:256]), validation=(x[256:320], y[256:320]),
                            nonmembers=(x[320:360], y[320:360]), test=(x[360:400], y[360:400]), reference=(),
                            indices={k: np.arange(0) for k in ("train", "validation", "nonmembers", "test",
                                                               "reference")})


def test_safecompress_selection_says_how_many_steps_the_kept_state_had(trained_cnn, splits):
    method = tfsafe.methods.get("safecompress", epochs=2, update_every=2, attack_size=20, attack_epochs=1,
                                batch_size=32, target_sparsity=0.8)
    result = method.compress(trained_cnn, splits, verbose=0)
    selection, total = result.selection, result.info["final"]["step"]
    # 16 batches, rounds of 3 candidates x 2 steps: the losing candidates' batches are not steps.
    assert selection["total_steps"] == total and 8 <= total < 16
    if selection["kept"] == "final":
        assert selection["early_state"] is False and selection["kept_round"] is None
        assert selection["kept_step"] == total and f"final state ({total}" in selection["note"]
    else:
        assert selection["early_state"] is True and selection["kept_round"] == selection["kept"]
        kept = result.history["train"][selection["kept"]]
        assert selection["kept_step"] == kept["step"] + kept["candidates"][kept["selected"]]["trial_steps"]
        assert 0 < selection["kept_step"] < total
        assert f"early state after {selection['kept_step']} of {total}" in selection["note"]


def test_early_stopped_tfmot_pruning_stops_at_max_steps_at_the_target(trained_cnn, splits):
    full = tfsafe.methods.get("baseline", epochs=3, batch_size=32, target_sparsity=0.75)
    early = tfsafe.methods.get("baseline", epochs=3, batch_size=32, target_sparsity=0.75, max_steps=10,
                               end_fraction=0.5)
    assert full.compress(trained_cnn, splits, verbose=0).info["steps"] == 24
    result = early.compress(trained_cnn, splits, verbose=0)
    assert result.info["steps"] == 10
    for stat in (s for s in weight_stats(result.stripped) if s["kind"] == "kernel"):
        assert 1 - stat["nonzeros"] / stat["params"] == pytest.approx(0.75, abs=0.01), stat["layer"]
    with pytest.raises(InputError, match="max_steps must be an integer >= 1"):
        tfsafe.methods.get("baseline", max_steps=0)
