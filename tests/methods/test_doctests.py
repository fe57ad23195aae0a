"""The docstring examples of the fast modules run (the slow ones are marked ``+SKIP``)."""

import doctest
import importlib

import pytest

FAST = ["tfsafe.methods", "tfsafe.methods.base", "tfsafe.methods.registry", "tfsafe.methods.baseline",
        "tfsafe.methods.atmc_projection", "tfsafe.methods.safecompress_selection", "tfsafe.recipes",
        "tfsafe.pipeline.run_state", "tfsafe.safety.simulated_attacker",
        "tfsafe.compress.densities"]


@pytest.mark.parametrize("name", FAST)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
