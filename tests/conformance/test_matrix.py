"""The conformance matrix: every zoo model x every mechanism (see ``conformance/zoo.py``).

A cell passes when the mechanism works with the right value (asserted inside the cell), or,
for the documented limits in ``zoo.LIMITS``, when it raises exactly the one clear line listed
there. Models are built once per session (``zoo.model`` / ``zoo.converted`` are cached).
"""

import pytest
from conformance import zoo


def _cells():
    for name in zoo.MODELS:
        for cell in zoo.CELLS:
            reason = zoo.h2_reason(name, cell)
            marks = [pytest.mark.xfail(strict=True, reason=f"fixed on branch h2: {reason}")] if reason else []
            yield pytest.param(name, cell, id=f"{name}:{cell}", marks=marks)


@pytest.fixture(scope="session", autouse=True)
def _zoo_session():
    """The zoo's models, data and files live for the session; freed at its end."""
    yield
    zoo.clear()


@pytest.mark.parametrize(("name", "cell"), list(_cells()))
def test_cell(name, cell):
    limit = zoo.limit_for(name, cell)
    if limit is None:
        assert zoo.CELLS[cell](name)
        return
    error_class, pattern, _why = limit
    with pytest.raises(error_class, match=pattern) as info:
        zoo.CELLS[cell](name)
    assert "\n" not in str(info.value).strip(), "a limit is one clear line"


def test_every_model_and_limit_is_covered():
    families = {name.split("/")[0].replace("-nested", "") for name in zoo.MODELS}
    assert {"mobilenetv2", "efficientnet", "nasnet", "inline-ops", "text", "tabular-sigmoid",
            "tabular-softmax", "lstm", "gru"} <= families
    assert any(name.endswith("-nested/keras3") for name in zoo.MODELS)
    for (pattern, cell), (_error, _regex, why) in zoo.LIMITS.items():
        assert cell in zoo.CELLS and why
        assert any(zoo.limit_for(name, cell) for name in zoo.MODELS), pattern
