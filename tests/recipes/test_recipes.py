import json

import pytest

import tfsafe.methods
from tfsafe.errors import InputError
from tfsafe.methods.base import CompressionMethod
from tfsafe.recipes import METHODS, check_params, load_recipe, merge_config


@pytest.mark.parametrize("method", METHODS)
def test_every_builtin_recipe_is_complete_and_accepted_by_its_method(method):
    recipe = load_recipe(method)
    assert recipe["method"] == method
    assert {"data", "dense", "params", "evaluation", "export", "seed"} <= set(recipe)
    assert recipe["evaluation"]["steps"] >= 20 and recipe["evaluation"]["restarts"] >= 1  # the protocol
    check_params(method, recipe["params"])


@pytest.mark.parametrize("method", METHODS)
def test_recipe_params_are_exactly_the_constructor_arguments_and_defaults(method):
    # One vocabulary and one set of defaults: Python, the recipes and the CLI agree.
    assert load_recipe(method)["params"] == tfsafe.methods.get(method).get_config()


def test_a_registered_method_without_a_recipe_file_gets_its_defaults():
    class Tiny(CompressionMethod):
        name = "tiny_for_recipes"

        def __init__(self, strength=0.5):
            self.strength = strength

    tfsafe.methods.register("tiny_for_recipes", Tiny)
    try:
        recipe = load_recipe("tiny_for_recipes", {"params": {"strength": 0.7}})
        assert recipe["params"] == {"strength": 0.7} and recipe["export"] == load_recipe("baseline")["export"]
        with pytest.raises(InputError, match="Unknown params for tiny_for_recipes: power"):
            load_recipe("tiny_for_recipes", {"params": {"power": 1}})
    finally:
        tfsafe.methods.unregister("tiny_for_recipes")
    assert "tiny_for_recipes" not in tfsafe.methods.names()


def test_overrides_merge_deeply_from_a_dict_or_a_file(tmp_path):
    recipe = load_recipe("safecompress", {"params": {"target_sparsity": 0.7}})
    assert recipe["params"]["target_sparsity"] == 0.7 and recipe["params"]["mia_weight"] == 1.0
    path = tmp_path / "my.json"
    path.write_text(json.dumps({"method": "atmc", "params": {"bits": 8}, "evaluation": {"steps": 40}}))
    recipe = load_recipe("atmc", str(path))
    assert recipe["params"]["bits"] == 8 and recipe["params"]["ratio"] == load_recipe("atmc")["params"]["ratio"]
    assert recipe["evaluation"]["steps"] == 40


def test_extra_method_params_are_checked_against_the_method():
    recipe = load_recipe("safecompress", {"params": {"grow": "gradient"}})
    check_params("safecompress", recipe["params"])
    with pytest.raises(InputError, match="Unknown params for atmc: ratoi"):
        load_recipe("atmc", {"params": {"ratoi": 0.1}})
    with pytest.raises(InputError, match="Unknown params for atmc: ratoi"):
        check_params("atmc", {"ratoi": 0.1})


@pytest.mark.parametrize("config, message", [
    ({"evaluaton": {}}, "Unknown key 'evaluaton'"),
    ({"data": {"pool": 3}}, "Unknown key 'data.pool'"),
    ({"dense": 5}, "'dense' must be a JSON object"),
    ({"method": "rlnet"}, "recipe for 'rlnet' but the method is 'atmc'"),
])
def test_bad_overrides_name_the_key(config, message):
    with pytest.raises(InputError, match=message):
        load_recipe("atmc", config)


def test_bad_files_and_methods_get_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_recipe("rlnet", str(bad))
    with pytest.raises(InputError, match="does not exist"):
        load_recipe("rlnet", str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="Unknown method 'prune'"):
        load_recipe("prune")
    assert merge_config({"a": {"b": 1}}, {"a": {"c": 2}}, open_keys=("a",)) == {"a": {"b": 1, "c": 2}}

