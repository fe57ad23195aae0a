"""The method contract, checked for every registered name: registry, compress, result, config, resume."""

import json

import numpy as np
import pytest

import tfsafe
import tfsafe.methods
from tfsafe._keras import keras
from tfsafe.data import MembershipSplits
from tfsafe.errors import InputError
from tfsafe.methods import StageCallback
from tfsafe.models import small_cnn
from tfsafe.safety.tests import PGDTest

# The smallest settings of each method (one epoch or less of work on 240 digits).
TINY = {
    "safecompress": {"epochs": 1, "update_every": 2, "attack_size": 20, "attack_epochs": 1, "batch_size": 32},
    "atmc": {"epochs": 1, "steps": 1, "select_steps": 2, "ratio": 0.3, "batch_size": 32, "ramp_epochs": 0.0},
    "self_compress": {"epochs": 1, "safety_size": 20, "monitor_every": 3, "batch_size": 32},
    "rlnet": {"teacher_epochs": 1, "search_epochs": 1, "finetune_epochs": 1, "pgd_steps": 1, "batch_size": 32,
              "adversarial": False, "augment": False},
    "baseline": {"epochs": 1, "batch_size": 32},
    "dp_sgd": {"epochs": 1, "batch_size": 32, "target_sparsity": 0.5, "prune_epochs": 1},
}


def _rlnet_model():
    keras.utils.set_random_seed(0)
    return tfsafe.methods.rlnet_cnn((8, 8, 1), 10, filters=(4, 8), dense=16)


@pytest.fixture(scope="module")
def tiny_splits(digits):
    """240 members, 60 validation, reference=() (empty optional part); nonmembers / test never read."""
    (x, y), _ = digits
    empty = (x[:0], y[:0])
    return MembershipSplits(train=(x[:240], y[:240]), validation=(x[240:300], y[240:300]),
                            nonmembers=(x[300:340], y[300:340]), test=(x[340:380], y[340:380]), reference=(),
                            indices={"train": np.arange(240), "validation": np.arange(240, 300),
                                     "nonmembers": np.arange(300, 340), "test": np.arange(340, 380),
                                     "reference": empty[1]})


@pytest.fixture(scope="module")
def dense(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = tfsafe.models.compile_classifier(small_cnn((8, 8, 1), 10))
    model.fit(x[:240], y[:240], epochs=2, batch_size=32, verbose=0)
    return model


class Recorder(StageCallback):
    """Records stage events; raises after ``kill_after`` ends (a kill once it is checkpointed)."""

    def __init__(self, kill_after=None):
        self.events, self.kill_after = [], kill_after

    def on_stage_begin(self, method, stage):
        self.events.append(("begin", stage))

    def on_stage_skip(self, method, stage):
        self.events.append(("skip", stage))

    def on_stage_end(self, method, stage, seconds):
        self.events.append(("end", stage))
        if stage == self.kill_after:
            raise KeyboardInterrupt(f"killed after {stage}")


def test_registry_names_and_errors():
    assert tfsafe.methods.names() == ("safecompress", "atmc", "self_compress", "rlnet", "baseline", "dp_sgd")
    with pytest.raises(InputError, match="Unknown method 'prune'; choose one of safecompress"):
        tfsafe.methods.get("prune")
    with pytest.raises(InputError, match="Unknown params for atmc: budgt"):
        tfsafe.methods.get("atmc", budgt=3)
    with pytest.raises(InputError, match="target_sparsity"):
        tfsafe.methods.get("safecompress", target_sparsity=1.5)
    with pytest.raises(InputError, match="already registered"):
        tfsafe.methods.register("atmc", tfsafe.methods.SafeCompress)
    with pytest.raises(InputError, match="CompressionMethod subclass"):
        tfsafe.methods.register("mine", dict)


@pytest.mark.parametrize("name", tfsafe.methods.names())
def test_contract(name, dense, tiny_splits, tmp_path):
    model = _rlnet_model() if name == "rlnet" else dense
    before = [w.copy() for w in model.get_weights()]
    method = tfsafe.methods.get(name, **TINY[name])
    config = method.get_config()
    assert type(method).from_config(json.loads(json.dumps(config))).get_config() == config
    assert set(config) == set(type(method).parameter_names())

    # Kill after the first stage, then resume: the finished stage is not run again.
    first, rest = method.stages[0], method.stages[1:]
    killer = Recorder(kill_after=first)
    with pytest.raises(KeyboardInterrupt):
        method.compress(model, tiny_splits, callbacks=[killer], checkpoint_dir=tmp_path, seed=1, verbose=0)
    assert killer.events == [("begin", first), ("end", first)]
    recorder = Recorder()
    result = method.compress(model, tiny_splits, callbacks=[recorder], checkpoint_dir=tmp_path, resume=True,
                             seed=1, verbose=0)
    assert recorder.events == [("skip", first)] + [e for s in rest for e in (("begin", s), ("end", s))]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # input untouched

    assert isinstance(result, tfsafe.methods.CompressionResult) and result.method == name
    assert result.config == config and result.seconds > 0
    assert {"kept", "early", "tests", "checks"} <= set(result.selection)
    if name == "atmc":  # the default selection test: PGD accuracy of each projected checkpoint
        assert result.selection["tests"][0]["name"].startswith("pgd_linf_")
        assert all(c["tests"][result.selection["tests"][0]["name"]] is not None for c in result.selection["checks"])
    json.dumps(result.info), json.dumps(result.history), json.dumps(result.selection)
    summary = result.to_dict()
    json.dumps(summary)
    assert summary["size"]["params"] > 0
    assert "history" not in repr(result) and len(repr(result)) < 300
    stripped = result.stripped
    assert stripped is result.stripped  # lazy, computed once
    x, _ = tiny_splits.test
    assert stripped.predict(x, verbose=0).shape == (len(x), 10)

    # A finished run resumes without running anything.
    again = Recorder()
    method.compress(model, tiny_splits, callbacks=[again], checkpoint_dir=tmp_path, resume=True, seed=1, verbose=0)
    assert again.events == [("skip", s) for s in method.stages]
    with pytest.raises(InputError, match="other settings"):
        method.compress(model, tiny_splits, checkpoint_dir=tmp_path, resume=True, seed=2, verbose=0)


def test_splits_must_be_membership_splits(dense, digits):
    with pytest.raises(InputError, match="MembershipSplits"):
        tfsafe.methods.get("baseline").compress(dense, digits[0])


def test_tests_round_trip_through_the_config():
    method = tfsafe.methods.get("atmc", tests=[(PGDTest(0.1, steps=3), 2.0)])
    config = json.loads(json.dumps(method.get_config()))
    assert config["tests"] == [{"class": "PGDTest", "config": PGDTest(0.1, steps=3).get_config(), "weight": 2.0}]
    rebuilt = tfsafe.methods.ATMC.from_config(config)
    assert rebuilt.tests[0][0].steps == 3 and rebuilt.tests[0][1] == 2.0
    # None (the method's own default check, e.g. ATMC's PGD accuracy) stays None, not "no tests".
    default = tfsafe.methods.get("atmc").get_config()
    assert default["tests"] is None and tfsafe.methods.ATMC.from_config(default).tests is None
