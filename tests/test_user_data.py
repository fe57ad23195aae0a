import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfsafe._keras import keras
from tfsafe.data_match import check_data_matches_model
from tfsafe.errors import InputError
from tfsafe.preprocessing import InputRangeWarning, decide_preprocessing
from tfsafe.safety.membership import audit_membership
from tfsafe.user_data import load_user_data


def _rgb(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def split_npz(tmp_path):
    """uint8 32x32x3 images with their own train/test split."""
    x, y = _rgb(40), np.random.default_rng(1).integers(0, 3, 40)
    path = tmp_path / "photos.npz"
    np.savez(path, x_train=x[:24], y_train=y[:24], x_test=x[24:], y_test=y[24:])
    return str(path), x, y


@pytest.fixture()
def binary_csv(tmp_path):
    """Binary features with a label column (string class names) and a train/test column."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.integers(0, 2, (30, 6)), columns=[f"f{i}" for i in range(6)])
    frame["label"] = rng.choice(["ham", "spam", "eggs"], 30)
    frame["part"] = ["train"] * 20 + ["test"] * 10
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    return str(path), frame


def _image_folder(root, classes=("cat", "dog"), per_class=3, size=10, mode="RGB"):
    images = {}
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 40 * c + i, np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / name / f"{i}.png")
            images[(name, i)] = pixels
    return images


def test_split_npz_keeps_the_split_and_says_where_it_came_from(split_npz):
    path, x, y = split_npz
    data = load_user_data(path)
    assert data.has_split and data.kind == "image" and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_test, x[24:])
    p = data.provenance
    assert p["format"] == "npz" and p["files"] == [os.path.abspath(path)] and p["has_split"]
    assert p["keys"] == {k: k for k in ("x_train", "y_train", "x_test", "y_test")}
    assert p["counts"] == {"train": 24, "test": 16} and p["shape"] == [32, 32, 3] and p["value_range"] == [0, 255]
    assert data.preprocessing.mode == "0-1" and data.preprocessing.source == "data"
    splits = data.splits(seed=0, validation_size=4)
    assert splits.provenance["members_known"] and splits.provenance["preprocessing"]["scale"] == 1 / 255
    assert json.loads(json.dumps(splits.provenance))["data"]["counts"] == {"train": 24, "test": 16}
    assert splits.train[0].dtype == np.float32 and splits.train[0].max() <= 1.0
    # members are rows of x_train; non-members and test rows of x_test only
    np.testing.assert_array_equal(splits.train[0], x[:24][splits.indices["train"]] / np.float32(255))
    test_rows = {r.tobytes() for r in (x[24:] / np.float32(255)).astype(np.float32)}
    assert all(r.tobytes() in test_rows for r in np.concatenate([splits.nonmembers[0], splits.test[0]]))
    assert not any(r.tobytes() in test_rows for r in splits.train[0])
    assert splits.sizes() == {"train": 20, "validation": 4, "nonmembers": 8, "test": 8, "reference": 0}


def test_pool_npz_is_one_pool_whose_members_are_unknown(tmp_path):
    path = tmp_path / "pool.npz"
    np.savez(path, x=_rgb(20).astype(np.float32) / 255, y=np.arange(20) % 2, class_names=np.array(["a", "b"]))
    data = load_user_data(str(path))
    assert not data.has_split and data.provenance["counts"] == {"pool": 20} and data.class_names == ["a", "b"]
    splits = data.splits(seed=0)
    assert not splits.provenance["members_known"] and "(one pool)" in splits.provenance["train"]["from"]
    capped = data.splits(seed=0, pool_size=10, train_size=4, validation_size=0, nonmember_size=3, test_size=3)
    assert "10 random rows of 20" in capped.provenance["train"]["from"] and capped.sizes()["train"] == 4
    gray = tmp_path / "gray.npz"
    np.savez(gray, x=_rgb(8)[..., 0], y=np.arange(8) % 2)
    loaded = load_user_data(str(gray))
    assert loaded.x_train.shape == (8, 32, 32, 1) and "added a channel axis" in loaded.provenance["notes"][0]
    with pytest.raises(InputError, match="pool_size applies to data without a train/test split"):
        load_user_data("digits").splits(pool_size=100)


def test_csv_with_label_column_and_split_column(binary_csv):
    path, frame = binary_csv
    with pytest.raises(InputError, match=r"column 'part' is not numeric \(e.g. 'train' on line 2\)"):
        load_user_data(path, label_column="label")
    frame.drop(columns=["part"]).to_csv(path + ".pool.csv", index=False)
    pool = load_user_data(path + ".pool.csv", label_column="label", normalization="mean_std")
    assert pool.kind == "tabular" and pool.x_train.shape == (30, 6) and pool.x_train.dtype == np.float32
    assert pool.class_names == ["eggs", "ham", "spam"] and pool.preprocessing.mode == "mean_std"
    split = load_user_data(path, label_column="label", split_column="part")
    assert split.has_split and split.x_train.shape == (20, 6) and split.x_test.shape == (10, 6)
    assert split.feature_names == [f"f{i}" for i in range(6)]
    assert split.provenance["keys"]["split"] == "part" and split.provenance["keys"]["label"] == "label"
    np.testing.assert_array_equal(split.x_train, frame.iloc[:20, :6].to_numpy(np.float32))
    names = np.array(split.class_names)
    np.testing.assert_array_equal(names[split.y_test], frame["label"].to_numpy()[20:])
    assert split.preprocessing.is_identity and split.preprocessing.expected_range is None


def test_image_folder_through_keras_loader(tmp_path):
    images = _image_folder(tmp_path / "pets")
    data = load_user_data(str(tmp_path / "pets"))
    assert data.class_names == ["cat", "dog"] and data.x_train.shape == (6, 10, 10, 3)
    assert data.x_train.dtype == np.uint8 and not data.has_split
    np.testing.assert_array_equal(data.x_train[3], images[("dog", 0)])
    np.testing.assert_array_equal(data.y_train, [0, 0, 0, 1, 1, 1])
    assert data.provenance["keys"]["image_size"] == [10, 10] and data.preprocessing.mode == "0-1"
    resized = load_user_data(str(tmp_path / "pets"), image_size=4)
    assert resized.x_train.shape == (6, 4, 4, 3)


def test_image_folder_with_train_and_test_folders(tmp_path):
    _image_folder(tmp_path / "split" / "train", mode="L")
    _image_folder(tmp_path / "split" / "test", per_class=2, mode="L")
    data = load_user_data(str(tmp_path / "split"))
    assert data.has_split and data.x_train.shape == (6, 10, 10, 1) and data.x_test.shape == (4, 10, 10, 1)
    assert data.provenance["keys"]["color_mode"] == "grayscale"


def test_builtin_names_still_load(tmp_path):
    digits = load_user_data("digits")
    assert digits.has_split and digits.provenance["format"] == "builtin" and digits.preprocessing.is_identity
    xs = _rgb(4)
    np.savez(tmp_path / "c.npz", x_train=xs, y_train=np.arange(4), x_test=xs, y_test=np.arange(4))
    cifar = load_user_data("cifar10", data_dir=tmp_path / "c.npz")
    assert cifar.x_train.dtype == np.uint8 and cifar.provenance["files"] == [str(tmp_path / "c.npz")]
    np.savez(tmp_path / "d.npz", x_train=xs, y_train=np.arange(4), x_test=xs, y_test=np.arange(4))
    with pytest.raises(InputError, match=r"several candidate CIFAR-10 files \(c.npz, d.npz\)"):
        load_user_data("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("case, message", [
    ("no_label_column", r"'.*rows.csv' is a CSV: pass label_column=NAME .*columns are: f0, f1"),
    ("unknown_label_column", r"has no column 'target' \(label_column\)"),
    ("missing_labels", r"'.*bad.csv' column 'label' has 2 missing labels \(first on line 3\); fill them in"),
    ("non_numeric", r"'.*bad.csv' column 'color' is not numeric \(e.g. 'red' on line 2\); encode it"),
    ("nan_feature", r"'.*bad.csv' column 'f0' has 1 missing values \(first on line 4\); impute"),
    ("npz_keys", r"'.*bad.npz' has keys \['images', 'labels'\]; expected x and y .* np.savez"),
    ("npz_partial", r"'.*bad.npz' has \['x_train', 'y_train'\] but not \['x_test', 'y_test'\]"),
    ("npz_junk", r"'.*bad.npz' is not a readable .npz file .*np.savez"),
    ("npz_class_names", r"'.*bad.npz' key 'y' has label 2 but the class names list only 2 classes"),
    ("npz_nan", r"'.*bad.npz' key 'x' contains 1 NaN or infinite values; clean or impute them"),
    ("one_class", r"image folder '.*one' has one class sub-folder \('cat'\); .* at least two"),
    ("wrong_flag", r"label_column applies to .csv files"),
    ("missing", r"'.*nothing.npz' is not a file, a folder or a built-in dataset"),
    ("format", r"'.*model.h5' is not a supported data file"),
])
def test_bad_input_is_one_line_naming_file_and_fix(tmp_path, binary_csv, case, message):
    path, frame = binary_csv
    bad_csv, bad_npz = tmp_path / "bad.csv", tmp_path / "bad.npz"
    if case == "no_label_column":
        call = lambda: load_user_data(path)  # noqa: E731
    elif case == "unknown_label_column":
        call = lambda: load_user_data(path, label_column="target")  # noqa: E731
    else:
        broken = frame.drop(columns=["part"]).head(5).copy()
        if case == "missing_labels":
            broken.loc[[1, 3], "label"] = None
        elif case == "non_numeric":
            broken["color"] = ["red", "blue", "red", "red", "blue"]
        elif case == "nan_feature":
            broken["f0"] = broken["f0"].astype(float)
            broken.loc[2, "f0"] = np.nan
        broken.to_csv(bad_csv, index=False)
        call = lambda: load_user_data(str(bad_csv), label_column="label")  # noqa: E731
    if case == "npz_keys":
        np.savez(bad_npz, images=np.zeros((2, 3)), labels=np.zeros(2))
        call = lambda: load_user_data(str(bad_npz))  # noqa: E731
    elif case == "npz_partial":
        np.savez(bad_npz, x_train=np.zeros((2, 3)), y_train=np.zeros(2))
        call = lambda: load_user_data(str(bad_npz))  # noqa: E731
    elif case == "npz_junk":
        bad_npz.write_text("not a zip")
        call = lambda: load_user_data(str(bad_npz))  # noqa: E731
    elif case == "npz_class_names":
        np.savez(bad_npz, x=np.zeros((3, 2)), y=np.arange(3), class_names=np.array(["a", "b"]))
        call = lambda: load_user_data(str(bad_npz))  # noqa: E731
    elif case == "npz_nan":
        x = np.zeros((2, 3))
        x[1, 1] = np.nan
        np.savez(bad_npz, x=x, y=np.zeros(2, int))
        call = lambda: load_user_data(str(bad_npz))  # noqa: E731
    elif case == "one_class":
        _image_folder(tmp_path / "one", classes=("cat",))
        call = lambda: load_user_data(str(tmp_path / "one"))  # noqa: E731
    elif case == "wrong_flag":
        np.savez(bad_npz, x=np.zeros((2, 3)), y=np.zeros(2, int))
        call = lambda: load_user_data(str(bad_npz), label_column="label")  # noqa: E731
    elif case == "missing":
        call = lambda: load_user_data(str(tmp_path / "nothing.npz"))  # noqa: E731
    elif case == "format":
        (tmp_path / "model.h5").write_bytes(b"\x89HDF")
        call = lambda: load_user_data(str(tmp_path / "model.h5"))  # noqa: E731
    with pytest.raises(InputError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.fixture()
def tiny_rgb_model():
    """An untrained dense classifier over 8x8x3 inputs in [0, 1] with 3 classes (no Rescaling layer)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(64, "relu"),
                              keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_check_data_matches_model(tiny_rgb_model):
    x, y = _rgb(4, size=8).astype(np.float32) / 255, np.array([0, 1, 2, 1])
    checked_x, checked_y = check_data_matches_model(tiny_rgb_model, x, np.eye(3)[y], name="photos.npz")
    np.testing.assert_array_equal(checked_y, y)
    with pytest.raises(InputError, match=r"photos.npz has examples shaped \(32, 32, 3\) .* takes \(8, 8, 3\); "
                                         r"resize the images to \(8, 8\)"):
        check_data_matches_model(tiny_rgb_model, _rgb(2), name="photos.npz")
    with pytest.raises(InputError, match=r"photos.npz has label 3 \(its largest\) but the model '.*' has 3 classes "
                                         r"\(outputs 0..2\); they look 1-based: subtract 1"):
        check_data_matches_model(tiny_rgb_model, x, y + 1, name="photos.npz")
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="photos.npz inputs contains 1 NaN"):
        check_data_matches_model(tiny_rgb_model, nan, y, name="photos.npz")
    with pytest.warns(InputRangeWarning, match=r"photos.npz inputs \(8-bit pixel values.*\[0, 255\]"):
        check_data_matches_model(tiny_rgb_model, (x * 255).round(), y, name="photos.npz")
    rescaling = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
    with pytest.warns(InputRangeWarning, match=r"rescales its inputs itself.*only \[0, 1\] of the expected \[0, 255\]"):
        check_data_matches_model(rescaling, x, y, name="photos.npz")
    tabular = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    with pytest.raises(InputError, match="6 feature columns and the model takes 5: check label_column"):
        check_data_matches_model(tabular, np.zeros((2, 6), np.float32), name="rows.csv")


def test_audit_is_the_same_for_uint8_and_float_npz(tmp_path, tiny_rgb_model):
    """The issue's finding: tfsafe audit fed uint8 pixels to a [0, 1] model; once preprocessed, storage
    as uint8 or float gives the same audit."""
    x, y = _rgb(80, seed=3, size=8), np.random.default_rng(4).integers(0, 3, 80)
    model = tiny_rgb_model
    model.fit(x[:40].astype(np.float32) / 255, y[:40], epochs=8, batch_size=8, verbose=0)  # learns x_train
    np.savez(tmp_path / "u8.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    np.savez(tmp_path / "f32.npz", x_train=x[:40].astype(np.float32) / 255, y_train=y[:40],
             x_test=x[40:].astype(np.float32) / 255, y_test=y[40:])
    audits, inputs = [], []
    for name in ("u8.npz", "f32.npz"):
        data = load_user_data(str(tmp_path / name))
        splits = data.splits(seed=0, preprocessing=data.preprocessing_for(model), validation_size=0)
        members, nonmembers = splits.audit_sets(seed=0)
        inputs.append(members[0])
        audits.append(audit_membership(model, members, nonmembers, attacks=["threshold", "entropy"]))
    np.testing.assert_array_equal(inputs[0], inputs[1])
    assert audits[0].worst == audits[1].worst
    assert audits[0].worst["auc"] > 0.6  # members are the model's real training rows
    # Fed raw (the old tfsafe audit), the uint8 file would give another, wrong audit; the range check says so.
    decided_on_float = decide_preprocessing(x[:40].astype(np.float32) / 255)
    with pytest.warns(InputRangeWarning, match=r"\[0, 255\] but the model expects about \[0, 1\]"):
        raw = load_user_data(str(tmp_path / "u8.npz")).splits(seed=0, preprocessing=decided_on_float,
                                                             validation_size=0)
    wrong = audit_membership(model, *raw.audit_sets(seed=0), attacks=["threshold", "entropy"])
    assert wrong.worst["auc"] != audits[0].worst["auc"]


def test_tflite_inputs_are_checked_against_the_calibration_range(int8_tflite, digits):
    from tflite_export.runtime import TFLiteModel

    _, (xt, yt) = digits
    model = TFLiteModel(int8_tflite.path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_data_matches_model(model, xt[:8], yt[:8], name="digits")
    with pytest.warns(InputRangeWarning, match=r"calibrated on \[0.0, 1.0\].*span \[0, 255\]"):
        check_data_matches_model(model, (xt[:8] * 255).round(), yt[:8], name="digits")
    with pytest.raises(InputError, match=r"has label 10 \(its largest\) but the model .* has 10 classes"):
        check_data_matches_model(model, xt[:2], [0, 10], name="digits")
