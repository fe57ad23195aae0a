"""The conformance matrix, small models (Keras 3 inline ops, text, tabular, LSTM / GRU) x every
mechanism; same cells and limits as ``test_matrix.py``."""

import pytest
from conformance import zoo


@pytest.fixture(scope="module", autouse=True)
def _zoo_cache():
    yield
    zoo.clear()


@pytest.mark.parametrize(("name", "cell"), list(zoo.cell_params(zoo.SMALL_MODELS)))
def test_small_model_cell(name, cell):
    zoo.check_cell(name, cell)
