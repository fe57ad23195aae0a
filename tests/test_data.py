import gzip
import pickle

import numpy as np
import pytest

from tfsafe.data import load_cifar10, load_digits, load_mnist, membership_split, read_idx
from tfsafe.errors import InputError


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
