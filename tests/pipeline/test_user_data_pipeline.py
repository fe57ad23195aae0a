"""The main job on a user's own model and data: .npz, .csv and image folders, end to end.

One tiny Keras 3 CNN (8x8 RGB, 3 classes, trained on [0, 1] inputs) and one tiny Keras 3 MLP
(12 features, 3 classes) are trained once for the module; every run uses tiny recipes.
"""

import json
import os

import keras as keras3
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from tfsafe.pipeline import compress_model

CLASSES = 3
TINY = {
    "dense": {"epochs": 1},
    "evaluation": {"steps": 3, "max_examples": 40, "membership_attacks": ["threshold"]},
    "export": {"min_agreement": 0.5, "calibration_samples": 50},
}
PARAMS = {
    "self_compress": {"epochs": 1, "safety_size": 20, "monitor_every": 3},
    "baseline": {"epochs": 1},
    "safecompress": {"epochs": 2, "update_every": 2, "attack_size": 40, "attack_epochs": 1},
    "rlnet": {"teacher_epochs": 1, "search_epochs": 1, "finetune_epochs": 1, "pgd_steps": 2},
}


def _config(method):
    return dict(TINY, params=PARAMS[method])


def _images(n, seed):
    """uint8 8x8 RGB images whose class sets one colour channel bright."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.integers(0, 90, (n, 8, 8, 3))
    x[np.arange(n), :, :, y] += 160
    return x.astype(np.uint8), y.astype(np.int64)


def _table(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    x[np.arange(n), y] += 3.0
    return x, y


def _fit(model, x, y):
    keras3.utils.set_random_seed(0)
    model.compile(optimizer=keras3.optimizers.Adam(1e-2),
                  loss=keras3.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """Files a user brings: image npz (split, uint8 and float), CSV, image folder, two Keras 3 models."""
    root = tmp_path_factory.mktemp("user")
    (x, y), (xt, yt) = _images(240, 0), _images(160, 1)
    np.savez(root / "split.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    np.savez(root / "split_float.npz", x_train=x.astype(np.float32) / 255, y_train=y,
             x_test=xt.astype(np.float32) / 255, y_test=yt)
    cnn = _fit(keras3.Sequential([
        keras3.Input((8, 8, 3)), keras3.layers.Conv2D(8, 3, padding="same"), keras3.layers.BatchNormalization(),
        keras3.layers.ReLU(), keras3.layers.GlobalAveragePooling2D(), keras3.layers.Dense(CLASSES)]),
        x.astype(np.float32) / 255, y)
    cnn.save(root / "cnn.keras")
    folder = root / "images"
    for i, (img, label) in enumerate(zip(*_images(60, 2))):
        os.makedirs(folder / f"class_{label}", exist_ok=True)
        Image.fromarray(img).save(folder / f"class_{label}" / f"{i}.png")
    xs, ys = _table(300, 3)
    header = ",".join([f"f{i}" for i in range(12)] + ["label"])
    rows = [",".join([f"{v:.5f}" for v in row] + [str(label)]) for row, label in zip(xs, ys)]
    (root / "table.csv").write_text("\n".join([header] + rows) + "\n")
    mlp = _fit(keras3.Sequential([keras3.Input((12,)), keras3.layers.Dense(16, activation="relu"),
                                  keras3.layers.Dense(CLASSES)]), xs, ys)
    mlp.save(root / "mlp.keras")
    return root


def _compress(user, tmp_path, method, data, model, *extra):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(_config(method)))
    out = tmp_path / "run"
    rc = run_cli("compress", f"--method={method}", f"--model={user / model}", f"--data={data}",
                 f"--config={config}", f"--out={out}", "--verbose=0", *extra)
    assert rc == 0
    return out, json.loads((out / "report.json").read_text())


def test_user_model_and_split_npz_members_only_from_x_train(user, tmp_path, capsys):
    out, report = _compress(user, tmp_path, "self_compress", user / "split.npz", "cnn.keras")
    dense, compressed, deployed = report["models"]
    assert dense["accuracy"] > 0.9  # the user's model is fed [0, 1] inputs, as it was trained
    for entry in (compressed, deployed):
        assert 0.0 <= entry["agreement_with_dense"] <= 1.0
    assert "agreement with the dense model" in (out / "report.md").read_text()
    assert 0.0 <= dense["membership"]["worst"]["auc"] <= 1.0
    meta = report["meta"]
    assert any(line.startswith("train:") and "x_train" in line for line in meta["split_sources"])
    assert any(line.startswith("nonmembers:") and "x_test" in line for line in meta["split_sources"])
    assert "1/255" in meta["preprocessing"] or "0.00392157" in meta["preprocessing"]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["preprocessing"]["mode"] == "0-1"
    assert run["settings"]["split_provenance"]["members_known"] is True
    # Every audited member is a row of x_train (as the model takes it); no non-member is.
    with np.load(user / "split.npz") as f:
        train_rows = {r.tobytes() for r in (f["x_train"].astype(np.float32) / np.float32(255))}
        test_rows = {r.tobytes() for r in (f["x_test"].astype(np.float32) / np.float32(255))}
    with np.load(out / "audit/members.npz") as m, np.load(out / "audit/nonmembers.npz") as n:
        assert all(r.tobytes() in train_rows for r in m["x"]) and len(m["x"]) > 0
        assert all(r.tobytes() in test_rows and r.tobytes() not in train_rows for r in n["x"])
    side = json.loads((out / (deployed["file"]["path"] + ".json")).read_text())
    assert side["normalization"]["mode"] == "0-1"
    capsys.readouterr()


@pytest.mark.parametrize("method", ["baseline", "self_compress"])
def test_tabular_csv_runs_every_stage_and_skips_image_tests(user, tmp_path, method, capsys):
    out, report = _compress(user, tmp_path, method, user / "table.csv", "mlp.keras", "--label_column=label")
    meta = report["meta"]
    assert set(meta["skipped tests"]) == {"corruptions", "safety_set"}
    assert "tabular" in meta["skipped tests"]["corruptions"]
    assert "median per-feature range" in meta["attack_eps"]
    # One pool and a model trained elsewhere: the membership row is not printed as a result.
    assert "not meaningful" in meta["membership"]
    assert all(m.get("membership") is None and m["membership_not_meaningful"] for m in report["models"])
    assert "not meaningful" in (out / "report.md").read_text()
    assert all(m["robustness"]["pgd_accuracy"] is not None for m in report["models"][:2])
    capsys.readouterr()


def test_image_folder_runs_to_a_report(user, tmp_path, capsys):
    out, report = _compress(user, tmp_path, "baseline", user / "images", "cnn.keras", "--image_size=8,8")
    assert report["models"][0]["accuracy"] > 0.8
    assert "image_folder" in report["meta"]["data"]
    assert (out / "report.html").exists()
    capsys.readouterr()


def test_audit_same_worst_auc_for_uint8_and_float_npz(user, tmp_path, capsys):
    aucs = []
    for name in ("split.npz", "split_float.npz"):
        out = tmp_path / name
        assert run_cli("audit", f"--model={user / 'cnn.keras'}", f"--data={user / name}", "--attacks=threshold,entropy",
                       f"--out={out}") == 0
        printed = capsys.readouterr().out
        assert "accuracy of the audited model: members" in printed
        audit = json.loads((out / "audit.json").read_text())
        assert audit["accuracy"]["members"] > 0.9
        aucs.append(audit["worst"]["auc"])
    assert aucs[0] == aucs[1]


def test_python_api_takes_a_path(user, tmp_path):
    report = compress_model("baseline", data=str(user / "table.csv"), model=str(user / "mlp.keras"),
                            label_column="label", normalization="mean_std", config=_config("baseline"),
                            out_dir=str(tmp_path / "api"), verbose=0, log=lambda *_: None)
    assert "mean_std" in report["meta"]["preprocessing"]


def _bad(tmp_path, user, capsys, *args, model="cnn.keras"):
    out = tmp_path / "bad_run"
    rc = run_cli("compress", "--method=baseline", f"--model={user / model}", f"--out={out}", "--verbose=0", *args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("tfsafe: error:") and "\n" not in err
    assert not out.exists()  # nothing --resume would trust
    return err


def test_bad_csv_missing_label_and_non_numeric(user, tmp_path, capsys):
    text = (user / "table.csv").read_text().splitlines()
    missing = tmp_path / "missing.csv"
    missing.write_text("\n".join(text[:3] + [text[3].rsplit(",", 1)[0] + ","] + text[4:]) + "\n")
    err = _bad(tmp_path, user, capsys, f"--data={missing}", "--label_column=label", model="mlp.keras")
    assert "missing.csv" in err and "'label'" in err and "line 4" in err
    words = tmp_path / "words.csv"
    words.write_text("\n".join([text[0]] + [r.replace(r.split(",")[0], "abc", 1) if i == 1 else r
                                            for i, r in enumerate(text[1:])]) + "\n")
    err = _bad(tmp_path, user, capsys, f"--data={words}", "--label_column=label", model="mlp.keras")
    assert "words.csv" in err and "'f0'" in err and "not numeric" in err


def test_bad_npz_keys_folder_shape_and_labels(user, tmp_path, capsys):
    np.savez(tmp_path / "keys.npz", images=np.zeros((4, 8, 8, 3)), labels=np.zeros(4))
    err = _bad(tmp_path, user, capsys, f"--data={tmp_path / 'keys.npz'}")
    assert "keys.npz" in err and "x_train" in err and "np.savez" in err
    one = tmp_path / "one_class" / "cat"
    one.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / "a.png")
    err = _bad(tmp_path, user, capsys, f"--data={tmp_path / 'one_class'}")
    assert "one_class" in err and "'cat'" in err and "two" in err
    err = _bad(tmp_path, user, capsys, f"--data={user / 'table.csv'}", "--label_column=label")
    assert "table.csv" in err and "(12,)" in err and "(8, 8, 3)" in err
    (x, y), (xt, yt) = _images(60, 5), _images(40, 6)
    np.savez(tmp_path / "labels.npz", x_train=x, y_train=y + 1, x_test=xt, y_test=yt + 1)
    err = _bad(tmp_path, user, capsys, f"--data={tmp_path / 'labels.npz'}")
    assert "labels.npz" in err and "label 3" in err and "subtract 1" in err


def test_audit_refuses_pool_data_and_names_a_shape_mismatch(user, tmp_path, capsys):
    args = [f"--model={user / 'cnn.keras'}", f"--out={tmp_path / 'audit'}"]
    assert run_cli("audit", *args, f"--data={user / 'images'}") == 2
    err = capsys.readouterr().err.strip()
    assert "images" in err and "one pool" in err and "x_train" in err and "\n" not in err
    assert run_cli("audit", *args, f"--data={user / 'table.csv'}", "--label_column=label") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfsafe: error:") and "one pool" in err
    (x, y), (xt, yt) = _table(80, 7), _table(60, 8)
    np.savez(tmp_path / "flat.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    assert run_cli("audit", *args, f"--data={tmp_path / 'flat.npz'}") == 2
    err = capsys.readouterr().err.strip()
    assert "flat.npz" in err and "(12,)" in err and "(8, 8, 3)" in err and "\n" not in err
    assert not (tmp_path / "audit").exists()


@pytest.mark.parametrize("method,architecture", [("safecompress", "mlp"), ("rlnet", "bn_mlp")])
def test_methods_train_an_mlp_on_tabular_split_data(tmp_path, method, architecture):
    (x, y), (xt, yt) = _table(300, 9), _table(300, 10)
    np.savez(tmp_path / "tab.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    config = dict(_config(method), dense={"epochs": 10})
    report = compress_model(method, data=str(tmp_path / "tab.npz"), config=config,
                            out_dir=str(tmp_path / "run"), verbose=0, log=lambda *_: None)
    dense, compressed, deployed = report["models"]
    assert dense["accuracy"] > 0.8 and 0.0 <= deployed["agreement_with_dense"] <= 1.0
    assert all(m["membership"]["worst"]["auc"] is not None for m in report["models"])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    provenance = run["settings"]["split_provenance"]
    # SafeCompress's simulated attacker gets real non-members: reference rows from x_test.
    assert provenance["reference"]["count"] > 0 and "x_test" in provenance["reference"]["from"]
    assert "x_train" in provenance["validation"]["from"]
    assert f"trained: {architecture}," in run["stages"]["dense"]["outputs"]["info"]["source"]


def test_a_model_that_rescales_raw_pixels_itself_is_refused_before_training(user, tmp_path, capsys):
    model = keras3.Sequential([keras3.Input((8, 8, 3)), keras3.layers.Rescaling(1 / 255),
                               keras3.layers.Conv2D(4, 3), keras3.layers.Flatten(), keras3.layers.Dense(CLASSES)])
    model.save(user / "rescaling.keras")
    err = _bad(tmp_path, user, capsys, f"--data={user / 'split.npz'}", model="rescaling.keras")
    assert "[0, 255]" in err and "--normalization 0-1" in err
