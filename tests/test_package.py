"""The public API: every exported name resolves, and every public layer is registered with Keras."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import tfsafe
from tfsafe._keras import keras, tfmot

SUBPACKAGES = ("tfsafe", "tfsafe.compress", "tfsafe.safety", "tfsafe.methods")
# Kinds of objects Keras deserializes by their registered name ("tfsafe>Name").
SERIALIZABLE = (keras.layers.Layer, keras.constraints.Constraint, keras.losses.Loss,
                tfmot.quantization.keras.quantizers.Quantizer, tfmot.quantization.keras.QuantizeConfig)


def _modules():
    """Every tfsafe module, imported."""
    names = ["tfsafe"] + [m.name for m in pkgutil.walk_packages(tfsafe.__path__, "tfsafe.")]
    return [importlib.import_module(name) for name in names]


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ repeats a name"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    # ``from package import *`` works (it fails on a name that does not resolve).
    namespace = {}
    exec(f"from {package} import *", namespace)
    assert set(module.__all__) - {"__version__"} <= set(namespace)


def test_top_level_names_are_the_modules_objects():
    from tfsafe.compress.strip import strip
    from tfsafe.methods.rlnet import rlnet
    from tfsafe.methods.safecompress import SafeCompress
    from tfsafe.safety.adversarial import pgd_attack

    assert tfsafe.strip is strip and tfsafe.rlnet is rlnet and tfsafe.SafeCompress is SafeCompress
    assert tfsafe.pgd_attack is pgd_attack
    for name in ("prune_safe", "safecompress", "atmc_compress", "factorize", "LearnableBitQuant", "self_compress",
                 "PolyReLUMask", "linearize", "evaluate_safety", "audit_membership", "fgsm_attack",
                 "corruption_accuracy", "SafetyReport", "model_size"):
        assert name in tfsafe.__all__


def test_subpackage_exports_do_not_hide_submodules():
    # ``tfsafe.compress.strip`` must stay the module (its registries are documented by that path).
    for package in SUBPACKAGES[1:]:
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__):
            assert inspect.ismodule(getattr(module, info.name)), f"{package}.{info.name} is not the submodule"


def test_exported_serializable_classes_are_registered():
    exported = [getattr(importlib.import_module(p), n) for p in SUBPACKAGES for n in importlib.import_module(p).__all__]
    classes = {obj for obj in exported if inspect.isclass(obj) and issubclass(obj, SERIALIZABLE)}
    assert {tfsafe.PrunableSafe, tfsafe.PolyReLUMask, tfsafe.LearnableBitQuant, tfsafe.FactorizedDense} <= classes
    # Training wrappers (keras.Model subclasses that drive ``fit``) are exported from their
    # subpackage; the ones exported at the top level must save and load too.
    top = {obj for obj in classes if obj.__name__ in tfsafe.__all__}
    for cls in classes:
        if issubclass(cls, keras.Model) and cls not in top:
            continue
        assert keras.utils.get_registered_object(f"tfsafe>{cls.__name__}") is cls, cls


def test_every_public_layer_in_tfsafe_is_registered():
    layers = set()
    for module in _modules():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
                    and issubclass(obj, SERIALIZABLE) and not issubclass(obj, keras.Model)):
                layers.add(obj)
    assert len(layers) >= 12
    missing = [cls.__qualname__ for cls in layers
               if keras.utils.get_registered_object(f"tfsafe>{cls.__name__}") is not cls]
    assert not missing, f"not registered with @keras.utils.register_keras_serializable(package='tfsafe'): {missing}"


def test_import_has_no_cycles_in_a_fresh_process():
    # ``import tfsafe.<anything>`` runs tfsafe/__init__.py first, which imports every subpackage in
    # one order (this process did that); the other entry point is the exporter package.
    code = "import tflite_export, tfsafe; assert tfsafe.strip and tflite_export.TFLiteModel"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
