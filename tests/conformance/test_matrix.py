"""The conformance matrix, keras.applications CNNs x every mechanism (see ``conformance/zoo.py``).

A cell passes when the mechanism works with the right value (asserted inside the cell), or,
for the documented limits in ``zoo.LIMITS``, when it raises exactly the one clear line listed
there. Models are built once per session (``zoo.model`` / ``zoo.converted`` are cached). The
small models are in ``test_matrix_small.py`` so the two halves run on separate workers.
"""

import pytest
from conformance import zoo


@pytest.fixture(scope="module", autouse=True)
def _zoo_cache():
    """The zoo's models, data and files live for this module; freed at its end."""
    yield
    zoo.clear()


@pytest.mark.parametrize(("name", "cell"), list(zoo.cell_params(zoo.CNN_MODELS)))
def test_cnn_cell(name, cell):
    zoo.check_cell(name, cell)


def test_every_model_and_limit_is_covered():
    families = {name.split("/")[0].replace("-nested", "") for name in zoo.MODELS}
    assert {"mobilenetv2", "efficientnet", "nasnet", "inline-ops", "text", "tabular-sigmoid",
            "tabular-softmax", "lstm", "gru"} <= families
    assert all(f"{family}-nested/keras3" in zoo.MODELS for family in ("mobilenetv2", "efficientnet", "nasnet"))
    assert set(zoo.CNN_MODELS) | set(zoo.SMALL_MODELS) == set(zoo.MODELS)
    for (pattern, cell), (_error, _regex, why) in zoo.LIMITS.items():
        assert cell in zoo.CELLS and why
        assert any(zoo.limit_for(name, cell) for name in zoo.MODELS), pattern
