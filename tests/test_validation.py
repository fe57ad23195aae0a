import numpy as np
import pytest

from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.validation import check_fraction, check_labels, check_model, check_xy


def test_check_xy_accepts_good_data_and_one_hot(trained_cnn, digits):
    (x, y), _ = digits
    xs, ys = check_xy(trained_cnn, x[:5], np.eye(10)[y[:5]])
    np.testing.assert_array_equal(ys, y[:5])


@pytest.mark.parametrize(
    "x_shape, message", [((4, 8, 8), "per-example shape"), ((4, 28, 28, 1), "expects"), ((0, 8, 8, 1), "empty")]
)
def test_check_xy_wrong_shapes(trained_cnn, x_shape, message):
    with pytest.raises(InputError, match=message):
        check_xy(trained_cnn, np.zeros(x_shape), np.zeros(x_shape[0], int))


def test_check_labels_out_of_range_and_non_integer():
    with pytest.raises(InputError, match="class id 12"):
        check_labels([0, 12], num_classes=10)
    with pytest.raises(InputError, match="integer"):
        check_labels([0.5, 1.0])
    with pytest.raises(InputError, match="negative"):
        check_labels([-1, 1])


def test_check_xy_rejects_inf(trained_cnn):
    x = np.zeros((2, 8, 8, 1))
    x[1, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        check_xy(trained_cnn, x, [0, 1])


def test_check_model_and_fraction():
    with pytest.raises(UnsupportedModelError, match="load it first"):
        check_model("m.keras")
    assert check_fraction(0.5, "s") == 0.5
    with pytest.raises(InputError, match=r"\[0.0, 1.0\)"):
        check_fraction(1.0, "sparsity")
