import gzip
import pickle

import numpy as np
import pytest

from tfsafe._keras import keras
from tfsafe.data import (
    MembershipSplits,
    data_kind,
    load_builtin,
    load_cifar10,
    load_digits,
    load_mnist,
    membership_split,
    membership_split_from_train_test,
    read_idx,
)
from tfsafe.errors import InputError
from tfsafe.safety.tests import as_safety_data


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_digits_are_scaled_images_with_labels():
    (x, y), (xt, yt) = load_digits()
    assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert len(x) + len(xt) == 1797 and set(np.unique(y)) == set(range(10))


def test_mnist_reads_idx_files_offline(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28))
    labels = rng.integers(0, 10, 5)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    (x, y), (xt, yt) = load_mnist(str(tmp_path))
    assert x.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(x[..., 0] * 255, images, atol=1e-3)
    np.testing.assert_array_equal(yt, labels)


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(InputError, match="truncated"):
        read_idx(str(path))


def test_cifar_reads_npz_and_pickles(tmp_path):
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x_train=xs, y_train=np.arange(4), x_test=xs, y_test=np.arange(4))
    (x, y), _ = load_cifar10(str(tmp_path))
    assert x.shape == (4, 32, 32, 3) and x.max() <= 1.0
    pk = tmp_path / "pk"
    pk.mkdir()
    batch = {b"data": xs.transpose(0, 3, 1, 2).reshape(4, -1), b"labels": [1, 2, 3, 4]}
    for name in ("data_batch_1", "test_batch"):
        with open(pk / name, "wb") as f:
            pickle.dump(batch, f)
    (x2, y2), _ = load_cifar10(str(pk))
    np.testing.assert_allclose(x2, xs / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y2, [1, 2, 3, 4])


def test_missing_files_tell_how_to_pass_data_dir(tmp_path):
    with pytest.raises(InputError, match="No MNIST files"):
        load_mnist(str(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        load_mnist(str(tmp_path / "nope"))


def test_membership_split_is_disjoint_and_reproducible(digits):
    (x, y), _ = digits
    a = membership_split(x, y, seed=3, train_size=0.4, validation_size=0.1, nonmember_size=0.2,
                         test_size=0.2, reference_size=50)
    b = membership_split(x, y, seed=3, train_size=0.4, validation_size=0.1, nonmember_size=0.2,
                         test_size=0.2, reference_size=50)
    c = membership_split(x, y, seed=4, train_size=0.4, validation_size=0.1, nonmember_size=0.2,
                         test_size=0.2, reference_size=50)
    all_idx = np.concatenate(list(a.indices.values()))
    assert len(all_idx) == len(np.unique(all_idx))
    for name in a.indices:
        np.testing.assert_array_equal(a.indices[name], b.indices[name])
    assert not np.array_equal(a.indices["train"], c.indices["train"])
    np.testing.assert_array_equal(a.train[0], x[a.indices["train"]])
    members, nonmembers = a.audit_sets(seed=0)
    assert len(members[0]) == len(nonmembers[0]) == len(a.nonmembers[0])


def test_membership_split_rejects_bad_sizes_and_data(digits):
    (x, y), _ = digits
    with pytest.raises(InputError, match="only"):
        membership_split(x, y, train_size=len(x), nonmember_size=10)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        membership_split(bad, y)
    with pytest.raises(InputError, match="labels"):
        membership_split(x, y[:-1])


def _keras_npz(path, n=4, seed=0):
    xs = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    np.savez(path, x_train=xs, y_train=np.arange(n), x_test=xs, y_test=np.arange(n))
    return xs


def test_data_dir_names_the_file_and_refuses_several_candidates(tmp_path):
    xs = _keras_npz(tmp_path / "a.npz", seed=1)
    _keras_npz(tmp_path / "b.npz", seed=2)
    with pytest.raises(InputError, match=r"several candidate CIFAR-10 files \(a.npz, b.npz\).*a.npz"):
        load_cifar10(str(tmp_path))
    (x, _), _ = load_cifar10(str(tmp_path / "a.npz"))
    np.testing.assert_allclose(x, xs / 255.0, atol=1e-6)
    train, test, files = load_builtin("cifar10", tmp_path / "a.npz", raw=True)
    assert train[0].dtype == np.uint8 and files == [str(tmp_path / "a.npz")]
    with pytest.raises(InputError, match="several candidate MNIST files"):
        load_mnist(str(tmp_path))
    with pytest.raises(InputError, match="not an .npz"):
        (tmp_path / "notes.txt").write_text("x")
        load_mnist(str(tmp_path / "notes.txt"))


def test_idx_folder_with_an_npz_beside_it_is_ambiguous(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(2))
    train, _, files = load_builtin("mnist", str(tmp_path), raw=True)
    assert train[0].shape == (2, 28, 28, 1) and train[0].dtype == np.uint8 and len(files) == 4
    _keras_npz(tmp_path / "extra.npz")
    with pytest.raises(InputError, match="train-images-idx3-ubyte.gz, extra.npz"):
        load_mnist(str(tmp_path))


@pytest.mark.parametrize("shape, dtype, kind", [
    ((5, 8, 8, 1), np.float32, "image"), ((5, 28, 28), np.uint8, "image"), ((5, 28, 28), np.float32, "image"),
    ((5, 20, 4), np.int64, "sequence"), ((5, 446), np.float32, "tabular"), ((5, 446), np.uint8, "tabular"),
    ((5, 12), np.int64, "sequence"),
])
def test_data_kind(shape, dtype, kind):
    x = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
    assert data_kind(x) == kind


def test_data_kind_binary_integers_are_tabular_and_embedding_means_sequence():
    binary = np.random.default_rng(0).integers(0, 2, (5, 30))
    assert data_kind(binary) == "tabular"
    model = keras.Sequential([keras.Input((30,)), keras.layers.Embedding(2, 4), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    assert data_kind(binary, model) == "sequence"
    with pytest.raises(InputError, match="feature axis"):
        data_kind(np.zeros(5))


def test_from_arrays_with_empty_optional_parts(digits):
    (x, y), (xt, yt) = digits
    splits = MembershipSplits.from_arrays(train=(x, y), test=(xt, yt), reference=())
    for name in ("validation", "nonmembers", "reference"):
        part_x, part_y = getattr(splits, name)
        assert part_x.shape == (0, 8, 8, 1) and part_x.dtype == np.float32 and part_y.shape == (0,)
    assert splits.sizes() == {"train": len(x), "validation": 0, "nonmembers": 0, "test": len(xt), "reference": 0}
    assert splits.indices == {} and splits.provenance["train"]["from"] == "given as arrays"
    members, nonmembers = splits.audit_sets()
    assert len(members[0]) == len(nonmembers[0]) == 0
    data = as_safety_data(splits)  # what evaluate_safety builds: no membership, no validation
    assert data.members is None and data.validation is None and len(data.test[0]) == len(xt)
    full = MembershipSplits.from_arrays(train=(x, y), test=(xt[:200], yt[:200]), nonmembers=(xt[200:], yt[200:]),
                                        provenance={"nonmembers": {"from": "held-out photos"}})
    assert full.provenance["nonmembers"] == {"from": "held-out photos", "count": len(xt) - 200}
    assert len(full.audit_sets()[1][0]) == len(xt) - 200
    with pytest.raises(InputError, match=r"validation x has examples shaped \(4,\) but train x has \(8, 8, 1\)"):
        MembershipSplits.from_arrays(train=(x, y), test=(xt, yt), validation=(np.zeros((3, 4)), np.zeros(3, int)))
    with pytest.raises(InputError, match="non-empty test"):
        MembershipSplits.from_arrays(train=(x, y), test=None)


def test_split_from_train_test_respects_the_given_split(digits):
    (x, y), (xt, yt) = digits
    s = membership_split_from_train_test(x, y, xt, yt, seed=1, validation_size=0.1, source="digits.npz")
    n_val = int(round(0.1 * len(x)))
    assert s.sizes() == {"train": len(x) - n_val, "validation": n_val, "nonmembers": len(xt) // 2,
                         "test": len(xt) - len(xt) // 2, "reference": 0}
    np.testing.assert_array_equal(s.train[0], x[s.indices["train"]])
    np.testing.assert_array_equal(s.validation[0], x[s.indices["validation"]])
    np.testing.assert_array_equal(s.nonmembers[0], xt[s.indices["nonmembers"]])
    np.testing.assert_array_equal(s.test[0], xt[s.indices["test"]])
    assert not set(s.indices["train"]) & set(s.indices["validation"])
    assert not set(s.indices["nonmembers"]) & set(s.indices["test"])
    # By content too: every member is a row of x_train, no non-member or test row is one.
    train_rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in train_rows for r in s.train[0])
    assert not any(r.tobytes() in train_rows for r in np.concatenate([s.nonmembers[0], s.test[0]]))
    assert "x_train of digits.npz" in s.provenance["train"]["from"]
    assert "x_test of digits.npz" in s.provenance["nonmembers"]["from"]
    members, nonmembers = s.audit_sets(seed=0)
    assert len(members[0]) == len(nonmembers[0]) == len(xt) // 2
    small = membership_split_from_train_test(x[:50], y[:50], xt, yt, validation_size=10, reference_size=20)
    assert small.sizes()["nonmembers"] == 40 and small.sizes()["reference"] == 20  # balanced with 40 members
    again = membership_split_from_train_test(x, y, xt, yt, seed=1, validation_size=0.1)
    np.testing.assert_array_equal(again.indices["nonmembers"], s.indices["nonmembers"])
    with pytest.raises(InputError, match="x_test has 449 rows"):
        membership_split_from_train_test(x, y, xt, yt, nonmember_size=449)
    with pytest.raises(InputError, match="x_test has per-example shape"):
        membership_split_from_train_test(x, y, xt[..., 0], yt)
