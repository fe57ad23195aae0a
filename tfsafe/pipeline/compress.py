"""``compress_model``: dense model -> compressed -> int8 ``.tflite`` -> safety evaluation -> report.

One generic loop over the pipeline's own stages and the method's ``stages``, each recorded in
``<out_dir>/run.json`` with the settings it depends on when it finishes:

1. ``dense``: the given model (checked against the data) or a dense model trained on the
   members with the recipe's ``dense`` settings; saved as ``dense.keras``.
2. the method's stages, recorded as ``<method>_<stage>`` (e.g. ``rlnet_teacher``): the method
   (``tfsafe.methods.get(method, **recipe["params"])``) checkpoints every stage under
   ``checkpoints/<method>/`` and resumes after the last finished one; the result's model is
   saved as ``compressed.keras`` (the method's own form: wrappers, factors, masks).
3. ``export``: ``compressed_<mode>.tflite`` (and its side-car JSON) through
   :func:`tflite_export.convert.to_tflite`, which fails when top-1 agreement with Keras on
   the test split is below ``export.min_agreement``.
4. ``evaluate_dense`` / ``evaluate_compressed`` / ``evaluate_tflite``: the safety tests of
   :func:`tfsafe.safety.evaluate.evaluate_safety` on the test split, membership on balanced
   members vs. untouched audit non-members; saved under ``evaluations/``.
5. ``report.json`` / ``report.md`` / ``report.html`` (rewritten on every run), with where each
   split came from, the preprocessing, the attack radius and its rule, the tests skipped for
   the data's kind, and each model's top-1 agreement with the dense model on the test split.

The data is loaded by :func:`tfsafe.user_data.load_user_data` (an ``.npz``, a ``.csv``, an
image folder or a built-in name); its preprocessing is decided once
(:meth:`~tfsafe.user_data.UserData.preprocessing_for` the given model), applied to every
split, recorded in ``run.json`` and in the ``.tflite`` side-car. Data with its own
``x_train`` / ``x_test`` split (an ``.npz``, train/test image folders, a CSV with a
``split_column``) keeps it (members and fine-tuning only from ``x_train``; the recipe's
``data.validation_fraction`` of ``x_train`` held out, ``data.reference_fraction`` of ``x_test``
as reference non-members); one pool is split by the recipe's other ``data`` sizes. Data, model
and preprocessing are checked before the run folder is created, so bad input leaves nothing
``--resume`` would trust.

On ``resume`` a stage is skipped when it finished with the same settings and no stage before
it was redone; so a resume after changing only ``export`` redoes export and what follows.
The balanced audit sets are written to ``audit/members.npz`` and ``audit/nonmembers.npz``
so ``tfsafe audit`` can re-audit the ``.tflite`` (or a copy pulled from a phone) on them.

Splits come from one seeded permutation, so a resumed run sees the same data.
"""

import dataclasses
import json
import os
import shutil
import time

import numpy as np

from tflite_export.convert import to_tflite
from tfsafe._keras import keras
from tfsafe.data_match import check_data_matches_model
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.io import atomic_path, atomic_write_json, load_model, save_model, to_jsonable
from tfsafe.methods import StageCallback, get, rlnet_cnn
from tfsafe.metrics import model_size
from tfsafe.models import compile_classifier, lenet, mlp, small_cnn, small_resnet
from tfsafe.pipeline.run_state import RUN_FILE, RunState
from tfsafe.preprocessing import default_attack_eps
from tfsafe.recipes import load_recipe
from tfsafe.report import SafetyReport
from tfsafe.safety.evaluate import DATASET_EPS, default_eps, evaluate_safety
from tfsafe.safety.tflite_model import as_target, predict_labels
from tfsafe.user_data import load_user_data

__all__ = ["compress_model", "StageRunner", "load_splits", "split_sizes", "dense_model", "method_params",
           "IMAGE_ONLY_TESTS"]

ARCHITECTURES = {"small_cnn": small_cnn, "lenet": lenet, "mlp": mlp, "rlnet_cnn": rlnet_cnn,
                 "small_resnet": small_resnet}  # + bn_mlp below
CONV_ARCHITECTURES = ("small_cnn", "lenet", "rlnet_cnn", "small_resnet")
# Safety tests that only make sense for images (pixel corruptions; Grad-CAM safety sets).
IMAGE_ONLY_TESTS = ("corruptions", "safety_set")
# Split data (x_train / x_test): validation held out of x_train, reference non-members out of x_test;
# the defaults of the recipe keys data.validation_fraction / data.reference_fraction (null = these).
SPLIT_SIZES = {"validation_size": 0.1, "reference_size": 0.2}
SPLIT_KEYS = {"validation_fraction": "validation_size", "reference_fraction": "reference_size"}
NOT_MEANINGFUL = ("not meaningful: the data is one pool (no x_train / x_test split) and the model was trained "
                  "elsewhere, so which rows it saw is unknown; its 'members' are random rows. Give x_train / x_test "
                  "(the rows it was trained on and rows it never saw) for a membership audit.")


def relative(path, root):
    """``path`` relative to ``root`` (what run.json records, so the folder can move)."""
    return os.path.relpath(path, root)


class StageRunner:
    """Runs named stages once; a stage done with the same settings is loaded from the run folder.

    Args:
        state: the :class:`~tfsafe.pipeline.run_state.RunState` of the run.
        log: where one-line progress messages go.

    Attributes:
        redone: ``True`` once a stage ran in this call: every later stage runs too.
    """

    def __init__(self, state, log=print):
        self.state = state
        self.log = log
        self.redone = False
        self.started = time.perf_counter()

    def path(self, *parts):
        """A path inside the run folder."""
        return os.path.join(self.state.out_dir, *parts)

    def skip(self, name, depends):
        """Whether ``name`` is done (same settings, nothing before it redone); logs the decision."""
        if not self.redone and self.state.done(name, depends):
            self.log(f"[{name}] done in an earlier run; skipped")
            return True
        if self.state.recorded(name):
            self.log(f"[{name}] its settings or an earlier stage changed; redoing")
            self.state.forget(name)
        self.redone = True
        return False

    def begin(self, name, what="running"):
        self.log(f"[{name}] {what} ...")
        return time.perf_counter()

    def end(self, name, started, depends, **outputs):
        self.state.finish(name, started, depends=depends, **outputs)
        seconds = time.perf_counter() - started
        self.log(f"[{name}] done in {seconds:.1f} s (total {time.perf_counter() - self.started:.1f} s)")

    def model_stage(self, name, depends, build):
        """``build() -> (model, info)`` once; saved as ``<name>.keras`` and loaded on resume."""
        if self.skip(name, depends):
            outputs = self.state.outputs(name)
            return load_model(self.path(outputs["model"])), outputs.get("info", {})
        started = self.begin(name)
        model, info = build()
        path = save_model(model, self.path(f"{name}.keras"))
        info = json.loads(json.dumps(to_jsonable(info)))
        self.end(name, started, depends, model=relative(path, self.state.out_dir), info=info)
        return model, info

    def json_stage(self, name, depends, build, what="running"):
        """``build() -> dict`` once; saved as ``evaluations/<name>.json`` and read on resume."""
        path = self.path("evaluations", f"{name}.json")
        if not self.skip(name, depends):
            started = self.begin(name, what)
            atomic_write_json(path, build())
            self.end(name, started, depends, result=relative(path, self.state.out_dir))
        with open(path, encoding="utf-8") as f:
            return json.load(f)


class _MethodStages(StageCallback):
    """Logs a method's stages and records each in run.json as ``<method>_<stage>``."""

    def __init__(self, stages, depends):
        self.stages, self.depends, self._started = stages, depends, None

    def on_stage_begin(self, method, stage):
        self._started = self.stages.begin(f"{method.name}_{stage}")

    def on_stage_skip(self, method, stage):
        self.stages.log(f"[{method.name}_{stage}] done in an earlier run; skipped")

    def on_stage_end(self, method, stage, seconds):
        self.stages.end(f"{method.name}_{stage}", self._started, self.depends)


def load_splits(data, data_dir, sizes, seed, preprocessing=None, model=None, **load):
    """The protocol splits of ``data`` and the preprocessing they were made with.

    A built-in dataset without ``model`` is pooled (train + test files) and split by the
    recipe's ``sizes`` (``pool_size`` included), as the recipes were tuned; data with its own
    ``x_train`` / ``x_test`` split (an ``.npz``, or a built-in one for a user's model) keeps it:
    members and validation only from ``x_train``, split by ``sizes``' ``validation_fraction``
    (of ``x_train``) and ``reference_fraction`` (of ``x_test``; ``None``: :data:`SPLIT_SIZES`);
    one pool is split by the other ``sizes``.

    Args:
        data: a path or built-in name (see :func:`tfsafe.user_data.load_user_data`), or a
            loaded :class:`~tfsafe.user_data.UserData`.
        data_dir: folder or file of a built-in dataset.
        sizes: the recipe's ``data`` section.
        seed: seeds the split.
        preprocessing: ``normalization`` (see :func:`tfsafe.preprocessing.decide_preprocessing`).
        model: the user's Keras model, or None (a dense model is trained on the members).
        **load: ``label_column``, ``image_size``, ``kind``, ``split_column`` for
            :func:`~tfsafe.user_data.load_user_data`.

    Returns:
        ``(user_data, preprocessing, splits)``.

    Raises:
        InputError: a split fraction outside [0, 1), or one given for data without a split.
    """
    if isinstance(data, str) or hasattr(data, "__fspath__"):
        data = load_user_data(data, data_dir=data_dir, normalization=preprocessing, **load)
    pre = data.preprocessing_for(model)
    sizes = dict(sizes)
    if data.has_split and data.provenance["format"] == "builtin" and model is None:
        x, y = data.pool()
        data = dataclasses.replace(data, x_train=x, y_train=y, x_test=None, y_test=None,
                                   provenance=dict(data.provenance, has_split=False))
    sizes = split_sizes(sizes, data)
    splits = data.splits(seed, pre, **sizes)
    splits.provenance["members_known"] = data.has_split or model is None
    return data, pre, splits


def split_sizes(sizes, data):
    """The size arguments of ``data.splits`` from a recipe's ``data`` section.

    Data with its own split gets ``validation_size`` / ``reference_size`` from
    ``validation_fraction`` (of ``x_train``) and ``reference_fraction`` (of ``x_test``), each
    ``None`` for :data:`SPLIT_SIZES`; one pool gets the pool sizes, and the two fraction keys
    must be ``None`` for it.
    """
    given = {key: sizes.get(key) for key in SPLIT_KEYS if sizes.get(key) is not None}
    if not data.has_split:
        if given:
            key = next(iter(given))
            raise InputError(f"data.{key} (--{key}) applies to data with its own x_train / x_test split, and "
                             f"{data.name} is one pool here; set data.validation_size / data.nonmember_size / "
                             "data.test_size (fractions of the pool) instead, or leave it out.")
        return {k: v for k, v in sizes.items() if k not in SPLIT_KEYS}
    result = dict(SPLIT_SIZES)
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            part = "x_train" if key == "validation_fraction" else "x_test"
            raise InputError(f"data.{key} (--{key}) must be a fraction of {part} in [0, 1), got {value!r}; "
                             "e.g. 0.1.")
        result[SPLIT_KEYS[key]] = float(value)
    return result


def bn_mlp(input_shape, num_classes, units=64, name="bn_mlp"):
    """Flatten -> Dense -> BatchNormalization -> ReLU -> logits: an MLP RLNet can make dual."""
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(units, name="fc1"),
                             keras.layers.BatchNormalization(momentum=0.9, name="bn1"), keras.layers.ReLU(name="relu1"),
                             keras.layers.Dense(num_classes, name="logits")], name=name)


def dense_model(architecture, input_shape, num_classes):
    """A fresh model of one of :data:`ARCHITECTURES` (logits output)."""
    if architecture == "bn_mlp":
        return bn_mlp(input_shape, num_classes)
    if architecture not in ARCHITECTURES:
        raise InputError(f"dense.architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}.")
    return ARCHITECTURES[architecture](input_shape=input_shape, num_classes=num_classes)


def method_params(params, data, eps=None, kind="image"):
    """The recipe's ``params`` with a ``null`` ``eps`` replaced by the dataset's usual radius.

    ``data`` is a built-in name (its protocol radius) or anything else with ``eps`` the
    :func:`tfsafe.preprocessing.default_attack_eps` headline for the user's data. Image
    augmentation (``augment``, RLNet's crops and flips) is turned off for other kinds of data.
    """
    params = dict(params)
    if kind != "image" and params.get("augment"):
        params["augment"] = False
    if "eps" in params and params["eps"] is None:
        if data in DATASET_EPS:
            params["eps"] = float(DATASET_EPS[data])
        elif eps is not None:
            params["eps"] = float(eps)
        else:
            raise InputError(f"params.eps is null and {data} gets no default attack radius (token sequences); set "
                             "params.eps in --config or choose a method without adversarial training.")
    return params


def _dense_stage(model_path, user_model, splits, settings, seed, verbose, num_classes):
    x, y = splits.train
    if user_model is not None:
        return user_model, {"source": os.path.abspath(model_path)}
    keras.utils.set_random_seed(seed)
    architecture = settings["architecture"]
    if x.ndim != 4 and architecture in CONV_ARCHITECTURES:
        # A conv net needs (H, W, C) inputs: flat data gets an MLP (with batch norm before its
        # ReLU where the method needs one, as RLNet's dual batch norm does).
        architecture = "bn_mlp" if architecture == "rlnet_cnn" else "mlp"
    model = dense_model(architecture, x.shape[1:], num_classes)
    compile_classifier(model, float(settings["learning_rate"]))
    validation = splits.validation if len(splits.validation[0]) else None
    model.fit(x, y, epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
              validation_data=validation, verbose=verbose)
    return model, {"source": f"trained: {architecture}, {settings['epochs']} epochs"}


def _write_audit_sets(splits, stages, seed):
    """``audit/members.npz`` and ``audit/nonmembers.npz``: the balanced sets, for ``tfsafe audit``."""
    for name, (x, y) in zip(("members", "nonmembers"), splits.audit_sets(seed=seed)):
        path = stages.path("audit", f"{name}.npz")
        if not os.path.exists(path):
            with atomic_path(path) as tmp:
                np.savez_compressed(tmp, x=x, y=y)


def _export(compressed, splits, settings, path, normalization):
    x, _ = splits.train
    result = to_tflite(compressed, path, mode=settings["mode"],
                       representative_data=x[:int(settings["calibration_samples"])],
                       verify=splits.test, min_agreement=settings["min_agreement"],
                       max_accuracy_drop=settings["max_accuracy_drop"], confidence_margin=settings["confidence_margin"],
                       normalization=normalization)
    return result.to_dict()


def _agreement(model, dense_labels, x):
    """Top-1 agreement of ``model`` (Keras or ``.tflite``) with the dense model's labels on ``x``."""
    return float(np.mean(predict_labels(as_target(model), x) == dense_labels))


def _tests(kind, eps):
    """The safety tests for data of ``kind``, and why the others are skipped."""
    names = ["clean", "pgd", "fgsm", "corruptions", "membership", "safety_set"]
    if kind == "image" and eps:
        return None, {}  # evaluate_safety's default: every test the splits allow
    skipped = {}
    if kind != "image":
        for name in IMAGE_ONLY_TESTS:
            skipped[name] = (f"{kind} data: {'pixel corruptions' if name == 'corruptions' else 'Grad-CAM safety sets'}"
                             " apply to images only")
    if not eps:
        skipped.update(pgd="no attack radius for token inputs", fgsm="no attack radius for token inputs")
    return [n for n in names if n not in skipped], skipped


def _prepare(data, model, data_dir, recipe, normalization, load):
    """Everything that can fail on the user's input, before the run folder exists."""
    if model is not None and not os.path.isfile(os.fspath(model)):
        raise InputError(f"--model file '{model}' does not exist.")
    user_model = None if model is None else load_model(model)
    user, pre, splits = load_splits(data, data_dir, recipe["data"], int(recipe["seed"]), preprocessing=normalization,
                                    model=user_model, **load)
    if user_model is not None:
        for part in ("test", "train"):
            check_data_matches_model(user_model, *getattr(splits, part), name=f"{user.name} ({part} split)",
                                     range_checked=pre.expected_range is not None)
    if user.kind == "image" and pre.mode == "model" and pre.expected_range and max(pre.expected_range) > 1.0:
        # The attacks, corruptions and radii work on images in [0, 1]; refuse before any training.
        raise UnsupportedModelError(
            f"The model rescales raw inputs in [{pre.expected_range[0]:g}, {pre.expected_range[1]:g}] itself (its "
            "Rescaling / Normalization layer), and tfsafe's attacks and corruptions need image inputs in [0, 1]. "
            "Remove that layer, save the model again and pass --normalization 0-1 (tfsafe then scales the data).")
    num_classes = max(user.num_classes, int(max(splits.train[1].max(), splits.test[1].max())) + 1)
    return user, pre, splits, user_model, num_classes


def compress_model(method, data="digits", model=None, data_dir=None, config=None, out_dir="out/compress",
                   resume=False, verbose=1, log=print, label_column=None, image_size=None, normalization=None,
                   kind=None, split_column=None):
    """Compress a model with one method, export it and write a safety report, resumably.

    Args:
        method: a registered method (:func:`tfsafe.methods.names`: ``safecompress``, ``atmc``,
            ``self_compress``, ``rlnet``, ``baseline`` = TF-MOT pruning, the unsafe baseline).
        data: the user's data (an ``.npz`` with ``x``, ``y`` or ``x_train``, ``y_train``,
            ``x_test``, ``y_test``; a ``.csv`` with ``label_column``; a folder with one
            sub-folder of images per class) or a built-in name: ``digits`` (bundled),
            ``mnist``, ``fashion_mnist``, ``cifar10``.
        model: path of a trained ``.keras`` / ``.h5`` model; ``None`` trains the recipe's
            dense model on the members first. With ``x_train`` / ``x_test`` data the model is
            audited on ``x_train`` members against ``x_test`` non-members; with one pool its
            members are unknown and the report says the membership row is not meaningful.
        data_dir: file or folder with a built-in dataset's files (offline use).
        config: overrides of the method's recipe (dict or JSON path); see :mod:`tfsafe.recipes`.
        out_dir: the run folder (models, ``.tflite``, evaluations, report, ``run.json``).
        resume: continue the run in ``out_dir``: stages done with the same settings are loaded.
        verbose: 1 shows Keras progress bars, 0 is quiet.
        log: where stage messages go.
        label_column: the CSV's label column.
        image_size: ``(height, width)`` or one int for image folders.
        normalization: ``"auto"`` (default), ``"0-1"``, ``"-1-1"``, ``"none"``, ``"mean_std"``
            or a dict (see :func:`tfsafe.preprocessing.decide_preprocessing`).
        kind: ``"tabular"``, ``"image"`` or ``"sequence"`` instead of the guess from shape and
            dtype (e.g. an integer count table, else taken for token sequences).
        split_column: the CSV's column saying ``train`` / ``test`` per row (a given split).

    Returns:
        The report as a dict (what ``report.json`` holds).

    Raises:
        InputError: unknown method, recipe key or parameter, a missing model file, bad data (a
            file, key or column named), data that does not fit the model, or a resume of a run
            on other data; raised before ``out_dir`` is written.

    Example:
        >>> report = compress_model("baseline", "digits", out_dir="/tmp/tfsafe-doc", verbose=0,
        ...                         config={"dense": {"epochs": 2}, "params": {"epochs": 1}})  # doctest: +SKIP
        >>> [m["role"] for m in report["models"]]  # doctest: +SKIP
        ['dense', 'unsafe baseline', 'deployed']
    """
    recipe = load_recipe(method, config)
    seed = int(recipe["seed"])
    load = {k: v for k, v in (("label_column", label_column), ("image_size", image_size), ("kind", kind),
                              ("split_column", split_column)) if v is not None}
    user, pre, splits, user_model, num_classes = _prepare(data, model, data_dir, recipe, normalization, load)
    eps_rule = default_attack_eps(splits.test[0], pre, kind=user.kind)
    compressor = get(method, **method_params(recipe["params"], data, eps_rule["eps"], user.kind))
    data_name = data if user.provenance["format"] == "builtin" else os.path.abspath(os.fspath(data))
    identity = {"method": method, "data": data_name, "model": None if model is None else os.path.abspath(model),
                "seed": seed, "splits": split_sizes(recipe["data"], user),
                "load": load, "preprocessing": pre.to_dict(), "split_provenance": splits.provenance}
    state = RunState(out_dir, identity, resume=resume)
    stages = StageRunner(state, log=log)
    log(f"data: {user.describe()}")
    log(f"preprocessing: {pre.describe()}")
    log(f"splits: {splits.sizes()}")
    _write_audit_sets(splits, stages, seed)

    dense, _ = stages.model_stage("dense", {"dense": recipe["dense"]},
                                  lambda: _dense_stage(model, user_model, splits, recipe["dense"], seed, verbose,
                                                       num_classes))

    # The method's own stages, checkpointed by the method; a change upstream starts them over.
    method_depends = {"params": compressor.get_config()}
    names = [f"{method}_{s}" for s in compressor.stages]
    if stages.redone or not all(state.done(n, method_depends) for n in names if state.recorded(n)):
        for name in names:
            state.forget(name)
        shutil.rmtree(stages.path("checkpoints", method), ignore_errors=True)
    redo_method = not all(state.done(n, method_depends) for n in names)
    result = compressor.compress(dense, splits, callbacks=[_MethodStages(stages, method_depends)],
                                 checkpoint_dir=stages.path("checkpoints", method), resume=True, seed=seed,
                                 verbose=verbose)
    stages.redone = stages.redone or redo_method
    compressed_path = save_model(result.model, stages.path("compressed.keras"))
    deployable = result.stripped

    export_settings = recipe["export"]
    tflite_path = stages.path(f"compressed_{export_settings['mode']}.tflite")
    export = stages.json_stage("export", {"export": export_settings},
                               lambda: _export(result.model, splits, export_settings, tflite_path, pre.to_dict()),
                               what=f"{export_settings['mode']} .tflite with a parity check")
    ev = recipe["evaluation"]
    builtin = user.provenance["format"] == "builtin"
    if ev["eps"] is not None:
        eps, eps_text = ev["eps"], "recipe evaluation.eps"
    elif builtin:  # the protocol's radii the built-in recipes were tuned with
        eps = default_eps(tuple(splits.test[0].shape[1:]))
        eps_text = "the protocol's radii for this input shape"
    else:
        eps, eps_text = eps_rule["radii"], eps_rule["rule"]
    eps = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    tests, skipped = _tests(user.kind, eps)

    def evaluate(target, source):
        return evaluate_safety(target, splits, tests=tests, source=source, reference=dense, eps=eps or None,
                               steps=int(ev["steps"]), restarts=int(ev["restarts"]), max_examples=ev["max_examples"],
                               membership_attacks=ev["membership_attacks"], attacks=tuple(ev["attacks"]),
                               masking_checks=bool(ev["masking_checks"]))

    what = f"safety tests ({', '.join(tests or ['clean', 'PGD', 'FGSM', 'corruptions', 'membership', 'safety set'])})"
    depends = {"evaluation": ev, "tests": tests}
    results = {
        "dense": stages.json_stage("evaluate_dense", depends, lambda: evaluate(dense, None), what),
        "compressed": stages.json_stage("evaluate_compressed", depends, lambda: evaluate(deployable, dense), what),
        "tflite": stages.json_stage("evaluate_tflite", depends, lambda: evaluate(tflite_path, deployable),
                                    "black-box and transfer tests of the .tflite"),
    }
    x_test = splits.test[0]
    dense_labels = predict_labels(dense, x_test)
    agreement = {"compressed": _agreement(deployable, dense_labels, x_test),
                 "tflite": _agreement(tflite_path, dense_labels, x_test)}
    name = user.name if builtin else os.path.basename(os.path.normpath(user.name))
    report = SafetyReport(f"tfsafe compress: {method} on {name}", method=method, dataset=user.name,
                          data=user.describe(), splits=splits.sizes(), split_sources=splits.describe(),
                          preprocessing=pre.describe(), params=result.config, run_record=RUN_FILE,
                          attack_eps=("none: " + eps_rule["rule"]) if not eps else
                          f"{', '.join(f'{e:.4g}' for e in eps)} ({eps_text})",
                          protocol="test split for accuracy/robustness; balanced members vs. never-used audit "
                                   "non-members for membership; worst case over attacks")
    if skipped:
        report.meta["skipped tests"] = skipped
    members_known = splits.provenance.get("members_known", True)
    if not members_known:
        report.meta["membership"] = NOT_MEANINGFUL
    report.add_evaluation("dense", "dense", results["dense"], size=model_size(dense))
    size = model_size(result.model, reference=dense)
    over_ideal = export["bytes"] / size["ideal_bytes"] if size["ideal_bytes"] else None
    report.add_evaluation(method, compressor.role, results["compressed"], size=size, method_info=result.info,
                          selection=result.selection, path=relative(compressed_path, state.out_dir),
                          agreement_with_dense=agreement["compressed"])
    report.add_evaluation(f"{method} {export_settings['mode']} .tflite", "deployed", results["tflite"],
                          file={"path": relative(tflite_path, state.out_dir), "bytes": export["bytes"],
                                "gzip_bytes": export["gzip_bytes"], "sparse_encoding": export["sparsity"],
                                "ideal_bytes": size["ideal_bytes"],
                                "tflite_over_ideal": over_ideal},
                          parity=export["parity"], agreement_with_dense=agreement["tflite"])
    if not members_known:
        for entry in report.models:
            entry["membership_not_meaningful"] = {"reason": NOT_MEANINGFUL, "measured": entry.pop("membership", None)}
    report.meta["seconds"] = round(sum(s["seconds"] for s in state.stages.values()), 1)
    paths = report.save(state.out_dir)
    log(report.to_markdown())
    log("wrote " + ", ".join(paths))
    return report.to_dict()
