"""``tfsafe compress --quick``: it shrinks every method's training as well as the evaluation,
and the report states each value it changed."""

import json

import numpy as np
import pytest
from conftest import run_cli

from tfsafe.cli import QUICK_PRESET, QUICK_TRAINING, quick_changes, quick_preset
from tfsafe.recipes import METHODS, load_recipe

# Schedule lengths, not training lengths: the eps ramp of ATMC / RLNet (1 epoch) shrinks nothing.
NOT_TRAINING_LENGTH = {"ramp_epochs"}


def _training_lengths(params):
    return {k: v for k, v in params.items()
            if k.endswith(("epochs", "steps")) and k not in NOT_TRAINING_LENGTH and v is not None}


@pytest.mark.parametrize("method", METHODS)
def test_quick_shrinks_every_training_length_of_every_recipe(method):
    recipe = load_recipe(method)
    quick = load_recipe(method, quick_preset(method))
    lengths = _training_lengths(recipe["params"])
    assert lengths, method  # every method trains for some epochs or steps
    for key, value in lengths.items():
        assert quick["params"][key] < value, f"--quick leaves {method} params.{key} at {value}"
    assert quick["dense"]["epochs"] < recipe["dense"]["epochs"]
    assert quick["evaluation"]["steps"] < recipe["evaluation"]["steps"]
    assert set(QUICK_TRAINING) == set(METHODS)


def test_quick_changes_lists_only_what_the_preset_changed():
    changes = quick_changes("atmc", {"params": {"epochs": 5}, "evaluation": {"steps": 7}})
    assert "params.epochs" not in changes and "evaluation.steps" not in changes  # the user's config wins
    assert changes["params.select_steps"] == {"recipe": 20, "quick": 5}
    assert changes["params.steps"] == {"recipe": 5, "quick": 3}
    assert changes["dense.epochs"] == {"recipe": 40, "quick": 10}
    assert changes["evaluation.masking_checks"] == {"recipe": True, "quick": False}
    assert changes["data.pool_size"] == {"recipe": 24000, "quick": QUICK_PRESET["data"]["pool_size"]}
    assert "evaluation.restarts" not in changes  # the preset's 1 is the recipe's 1


def test_compress_quick_end_to_end_trains_fewer_epochs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 8))
    x[np.arange(300), y] += 3.0
    header = ",".join([f"f{i}" for i in range(8)] + ["label"])
    (tmp_path / "t.csv").write_text("\n".join([header] + [",".join([f"{v:.4f}" for v in row] + [str(label)])
                                                          for row, label in zip(x, y)]) + "\n")
    # A smaller evaluation than the preset's keeps the test fast; the user's --config wins over --quick.
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"evaluation": {"steps": 2, "max_examples": 30, "attacks": ["pgd"],
                                                 "membership_attacks": ["threshold"]}}))
    out = tmp_path / "run"
    assert run_cli("compress", "--method=dp_sgd", "--quick", f"--data={tmp_path / 't.csv'}", "--label_column=label",
                   f"--config={config}", f"--out={out}", "--verbose=0") == 0
    printed = capsys.readouterr().out
    assert "states the --quick preset: " in printed and "params.epochs" in printed
    report = json.loads((out / "report.json").read_text())
    overrides = report["meta"]["quick overrides"]
    assert overrides["params.epochs"] == "20 -> 3" and overrides["params.prune_epochs"] == "5 -> 1"
    assert overrides["dense.epochs"] == "40 -> 10" and overrides["evaluation.masking_checks"] == "True -> False"
    assert "evaluation.steps" not in overrides and "evaluation.max_examples" not in overrides
    assert "shrunken training and evaluation" in report["meta"]["preset"]
    assert "quick overrides" in (out / "report.md").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["dense"]["outputs"]["info"]["source"] == "trained: mlp, 10 epochs"
    # The method trained 3 epochs of (members // batch 64) DP steps, as the privacy accounting says.
    members = run["settings"]["split_provenance"]["train"]["count"]
    info = report["models"][1]["method_info"]
    assert info["privacy"]["train_steps"] == 3 * (members // 64) and info["steps"] == 3 * (members // 64)
