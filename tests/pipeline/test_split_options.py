"""Split sizes and data options a user sets: --validation_fraction, --reference_fraction (recipe
data.validation_fraction / data.reference_fraction), --kind and --split_column, end to end."""

import json

import keras as keras3
import numpy as np
import pytest
from conftest import run_cli

from tfsafe.errors import InputError
from tfsafe.pipeline.compress import SPLIT_SIZES, split_sizes
from tfsafe.recipes import load_recipe
from tfsafe.user_data import load_user_data

TINY = {
    "dense": {"epochs": 2},
    "params": {"epochs": 1},
    "evaluation": {"steps": 2, "max_examples": 30, "membership_attacks": ["threshold"], "masking_checks": False,
                   "attacks": ["pgd"]},
    "export": {"min_agreement": 0.5, "max_accuracy_drop": 0.5, "calibration_samples": 30},
}


def _counts(n, seed):
    """An integer count table (N, 6) int64, 3 classes: the class's column counts high."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.poisson(1.0, (n, 6))
    x[np.arange(n), y] += 4
    return x.astype(np.int64), y.astype(np.int64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    (x, y), (xt, yt) = _counts(160, 0), _counts(120, 1)
    np.savez(root / "counts.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    np.savez(root / "pool.npz", x=x.astype(np.float32), y=y)
    part = np.array(["train"] * 100 + ["test"] * 80)
    xs, ys = _counts(180, 2)
    header = ",".join([f"c{i}" for i in range(7)] + ["label", "part"])
    rows = [",".join([str(v) for v in row] + [str(i), str(label), p]) for i, (row, label, p) in
            enumerate(zip(xs, ys, part))]
    (root / "table.csv").write_text("\n".join([header] + rows) + "\n")
    bad = [r.rsplit(",", 1)[0] + ",valid" if i == 5 else r for i, r in enumerate(rows)]
    (root / "bad_part.csv").write_text("\n".join([header] + bad) + "\n")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root


def test_split_fractions_come_from_the_recipe_and_are_checked(files):
    split = load_user_data(str(files / "counts.npz"))
    pool = load_user_data(str(files / "pool.npz"))
    data = load_recipe("baseline")["data"]
    assert data["validation_fraction"] is None and data["reference_fraction"] is None
    assert split_sizes(data, split) == SPLIT_SIZES == {"validation_size": 0.1, "reference_size": 0.2}
    assert split_sizes(dict(data, validation_fraction=0.3, reference_fraction=0), split) == {
        "validation_size": 0.3, "reference_size": 0.0}
    assert split_sizes(data, pool) == {k: data[k] for k in ("pool_size", "train_size", "validation_size",
                                                            "nonmember_size", "test_size")}
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(InputError, match=r"data.validation_fraction \(--validation_fraction\) must be a "
                                             r"fraction of x_train in \[0, 1\)"):
            split_sizes(dict(data, validation_fraction=bad), split)
    with pytest.raises(InputError, match="data.reference_fraction .* applies to data with its own x_train / x_test"):
        split_sizes(dict(data, reference_fraction=0.1), pool)


def test_kind_overrides_the_guess_for_an_integer_count_table(files):
    assert load_user_data(str(files / "counts.npz")).kind == "sequence"  # int64 non-0/1 values look like tokens
    assert load_user_data(str(files / "counts.npz"), kind="tabular").kind == "tabular"


def test_compress_with_a_split_column_split_fractions_and_kind(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("compress", "--method=baseline", f"--data={files / 'table.csv'}", "--label_column=label",
                   "--split_column=part", "--validation_fraction=0.25", "--reference_fraction=0.1", "--kind=tabular",
                   f"--config={files / 'tiny.json'}", f"--out={out}", "--verbose=0") == 0
    capsys.readouterr()
    run = json.loads((out / "run.json").read_text())
    provenance = run["settings"]["split_provenance"]
    # 100 rows marked train: 25 validation, 75 members; 80 marked test: 8 reference, the rest audit / test.
    assert (provenance["train"]["count"], provenance["validation"]["count"]) == (75, 25)
    assert provenance["reference"]["count"] == 8 and "x_train" in provenance["train"]["from"]
    assert provenance["nonmembers"]["count"] + provenance["test"]["count"] == 72
    assert run["settings"]["splits"] == {"validation_size": 0.25, "reference_size": 0.1}
    assert run["settings"]["load"] == {"label_column": "label", "kind": "tabular", "split_column": "part"}
    ids = {"train": set(range(100)), "test": set(range(100, 180))}  # column c6 is the row id
    with np.load(out / "audit/members.npz") as m, np.load(out / "audit/nonmembers.npz") as n:
        assert len(m["x"]) > 0 and set(m["x"][:, 6].astype(int)) <= ids["train"]
        assert len(n["x"]) > 0 and set(n["x"][:, 6].astype(int)) <= ids["test"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["meta"]["skipped tests"]) == {"corruptions", "safety_set"}


def test_audit_takes_kind_and_split_column(files, tmp_path, capsys):
    keras3.utils.set_random_seed(0)
    for features in (6, 7):
        model = keras3.Sequential([keras3.Input((features,)), keras3.layers.Dense(8, activation="relu"),
                                   keras3.layers.Dense(3)])
        model.save(tmp_path / f"mlp{features}.keras")
    out = tmp_path / "audit_counts"
    assert run_cli("audit", f"--model={tmp_path / 'mlp6.keras'}", f"--data={files / 'counts.npz'}", "--kind=tabular",
                   "--attacks=threshold", f"--out={out}") == 0
    capsys.readouterr()
    assert "tabular (6,) int64" in json.loads((out / "audit.json").read_text())["meta"]["data"]
    out = tmp_path / "audit_csv"
    assert run_cli("audit", f"--model={tmp_path / 'mlp7.keras'}", f"--data={files / 'table.csv'}",
                   "--label_column=label", "--split_column=part", "--attacks=threshold", f"--out={out}") == 0
    capsys.readouterr()
    splits = json.loads((out / "audit.json").read_text())["meta"]["splits"]
    assert any(line.startswith("train: 100 rows from x_train") for line in splits), splits


@pytest.mark.parametrize("args, words", [
    (["--data={root}/bad_part.csv", "--label_column=label", "--split_column=part"],
     ["bad_part.csv", "column 'part'", "'valid'", "train", "test"]),
    (["--data={root}/table.csv", "--label_column=label", "--split_column=fold"], ["table.csv", "no column 'fold'"]),
    (["--data={root}/counts.npz", "--split_column=part"], ["split_column applies to .csv files", "counts.npz"]),
    (["--data={root}/pool.npz", "--validation_fraction=0.2"],
     ["data.validation_fraction (--validation_fraction) applies to data with its own x_train / x_test split"]),
    (["--data={root}/counts.npz", "--validation_fraction=1.5"], ["--validation_fraction takes a fraction in [0, 1)"]),
    (["--data={root}/counts.npz", "--kind=tokens"], ["--kind=tokens: value should be one of <tabular|image|sequence>"]),
])
def test_bad_split_options_are_one_line(files, tmp_path, capsys, args, words):
    out = tmp_path / "bad"
    rc = run_cli("compress", "--method=baseline", f"--out={out}", "--verbose=0",
                 *[a.format(root=files) for a in args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("tfsafe: error:") and "\n" not in err, err
    assert all(w in err for w in words), err
    assert not out.exists()
