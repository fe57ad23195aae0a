"""``compress_model``: dense model -> compressed -> int8 ``.tflite`` -> safety evaluation -> report.

The stages, each recorded in ``<out_dir>/run.json`` when it finishes:

1. ``dense``: the given model (checked against the data) or a dense model trained on the
   members with the recipe's ``dense`` settings; saved as ``dense.keras``.
2. the method's stages (``safecompress``, ``atmc``, ``self_compress``, ``rlnet_teacher`` /
   ``rlnet_search`` / ``rlnet_finetune``, ``tfmot_pruning``); the last one is saved as
   ``compressed.keras`` (the method's own form: wrappers, factors, masks). SafeCompress also
   checkpoints every round under ``checkpoints/``.
3. ``export``: ``compressed_int8.tflite`` (and its side-car JSON) through
   :func:`tflite_export.convert.to_tflite`, which fails when top-1 agreement with Keras on
   the test split is below ``export.min_agreement``.
4. ``evaluate_dense`` / ``evaluate_compressed`` / ``evaluate_tflite``: the safety tests of
   :func:`tfsafe.safety.evaluate.evaluate_safety` on the test split, membership on balanced
   members vs. untouched audit non-members; saved under ``evaluations/``.
5. ``report.json`` / ``report.md`` / ``report.html``.

The balanced audit sets are also written to ``audit/members.npz`` and ``audit/nonmembers.npz``
so ``tfsafe audit`` can re-audit the ``.tflite`` (or a copy pulled from a phone) on them.

Splits come from one seeded permutation, so a resumed run sees the same data.
"""

import json
import os
import time

import numpy as np

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.io import atomic_write_json, load_model, save_model
from tfsafe.models import compile_classifier
from tfsafe.pipeline.methods import RUNNERS, check_params, relative
from tfsafe.pipeline.run_state import RUN_FILE, RunState
from tfsafe.recipes import load_recipe

__all__ = ["compress_model", "StageRunner", "load_splits", "dense_model"]

ARCHITECTURES = ("small_cnn", "lenet", "mlp", "rlnet_cnn")


class StageRunner:
    """Runs named stages once: a finished stage is loaded from the run folder instead.

    Args:
        state: the :class:`~tfsafe.pipeline.run_state.RunState` of the run.
        seed: the run's seed (methods read it from here).
        verbose: Keras verbosity (1 = progress bars).
        log: where one-line progress messages go.
        data: the dataset's name (methods read its default training eps from here).
    """

    def __init__(self, state, seed=0, verbose=1, log=print, data="digits"):
        self.state = state
        self.data = data
        self.seed = int(seed)
        self.verbose = int(verbose)
        self.log = log
        self.started = time.perf_counter()

    def path(self, *parts):
        """A path inside the run folder."""
        return os.path.join(self.state.out_dir, *parts)

    def _begin(self, name, what):
        if self.state.done(name):
            self.log(f"[{name}] done in an earlier run; skipped")
            return None
        self.log(f"[{name}] {what} ...")
        return time.perf_counter()

    def _end(self, name, started):
        seconds = time.perf_counter() - started
        self.log(f"[{name}] done in {seconds:.1f} s (total {time.perf_counter() - self.started:.1f} s)")

    def model_stage(self, name, build, filename=None):
        """``build() -> (model, info)`` once; saved as ``<name>.keras`` and loaded on resume."""
        filename = filename or f"{name}.keras"
        started = self._begin(name, "running")
        if started is None:
            outputs = self.state.outputs(name)
            return load_model(self.path(outputs["model"])), outputs.get("info", {})
        model, info = build()
        path = save_model(model, self.path(filename))
        self.state.finish(name, started, model=relative(path, self.state.out_dir), info=info)
        self._end(name, started)
        return model, json.loads(json.dumps(info, default=_jsonable))

    def json_stage(self, name, build, what="running"):
        """``build() -> dict`` once; saved as ``evaluations/<name>.json`` and read on resume."""
        path = self.path("evaluations", f"{name}.json")
        started = self._begin(name, what)
        if started is None:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        result = build()
        atomic_write_json(path, result)
        self.state.finish(name, started, result=relative(path, self.state.out_dir))
        self._end(name, started)
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def _jsonable(value):
    from tfsafe.io import to_jsonable  # noqa: PLC0415

    return to_jsonable(value)


def load_splits(data, data_dir, sizes, seed):
    """The protocol splits of dataset ``data`` (train + test files pooled, then split by seed)."""
    from tfsafe.data import load_dataset, membership_split  # noqa: PLC0415

    (x, y), (xt, yt) = load_dataset(data, data_dir=data_dir)
    x, y = np.concatenate([x, xt]), np.concatenate([y, yt])
    sizes = dict(sizes)
    pool_size = sizes.pop("pool_size", None)
    if pool_size is not None and int(pool_size) < len(x):
        keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:int(pool_size)])
        x, y = x[keep], y[keep]
    return membership_split(x, y, seed=seed, **sizes)


def dense_model(architecture, input_shape, num_classes):
    """A fresh model of one of :data:`ARCHITECTURES` (logits output)."""
    from tfsafe import models  # noqa: PLC0415 - small_cnn, lenet, mlp
    from tfsafe.methods.rlnet import rlnet_cnn  # noqa: PLC0415

    builders = {"small_cnn": models.small_cnn, "lenet": models.lenet, "mlp": models.mlp, "rlnet_cnn": rlnet_cnn}
    if architecture not in builders:
        raise InputError(f"dense.architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}.")
    return builders[architecture](input_shape=input_shape, num_classes=num_classes)


def _dense_stage(model_path, splits, settings, seed, verbose):
    from tfsafe.validation import check_xy  # noqa: PLC0415

    x, y = splits.train
    num_classes = int(max(y.max(), splits.test[1].max())) + 1
    if model_path:
        model = load_model(model_path)
        check_xy(model, *splits.test, name=f"the test split of the data for '{model_path}'")
        return model, {"source": os.path.abspath(model_path)}
    keras.utils.set_random_seed(seed)
    model = dense_model(settings["architecture"], x.shape[1:], num_classes)
    compile_classifier(model, float(settings["learning_rate"]))
    model.fit(x, y, epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
              validation_data=splits.validation, verbose=verbose)
    return model, {"source": f"trained: {settings['architecture']}, {settings['epochs']} epochs"}


def _write_audit_sets(splits, stages, seed):
    """``audit/members.npz`` and ``audit/nonmembers.npz``: the balanced sets, for ``tfsafe audit``."""
    from tfsafe.io import atomic_path  # noqa: PLC0415

    for name, (x, y) in zip(("members", "nonmembers"), splits.audit_sets(seed=seed)):
        path = stages.path("audit", f"{name}.npz")
        if not os.path.exists(path):
            with atomic_path(path) as tmp:
                np.savez_compressed(tmp, x=x, y=y)


def _export(compressed, splits, settings, path):
    from tflite_export.convert import to_tflite  # noqa: PLC0415

    x, _ = splits.train
    result = to_tflite(compressed, path, mode=settings["mode"],
                       representative_data=x[:int(settings["calibration_samples"])],
                       verify=splits.test, min_agreement=settings["min_agreement"])
    return result.to_dict()


def compress_model(method, data="digits", model=None, data_dir=None, config=None, out_dir="out/compress",
                   resume=False, verbose=1, log=print):
    """Compress a model with one method, export it and write a safety report, resumably.

    Args:
        method: ``safecompress``, ``atmc``, ``self_compress``, ``rlnet`` or ``baseline``
            (TF-MOT pruning, the unsafe baseline).
        data: ``digits`` (bundled), ``mnist``, ``fashion_mnist`` or ``cifar10``.
        model: path of a trained ``.keras`` / ``.h5`` model; ``None`` trains the recipe's
            dense model on the members first.
        data_dir: folder with the dataset files (offline use).
        config: overrides of the method's recipe (dict or JSON path); see :mod:`tfsafe.recipes`.
        out_dir: the run folder (models, ``.tflite``, evaluations, report, ``run.json``).
        resume: continue the run in ``out_dir``: finished stages are loaded, not redone.
        verbose: 1 shows Keras progress bars, 0 is quiet.
        log: where stage messages go.

    Returns:
        The report as a dict (what ``report.json`` holds).

    Example:
        >>> report = compress_model("baseline", "digits", out_dir="/tmp/tfsafe-doc", verbose=0,
        ...                         config={"dense": {"epochs": 2}, "params": {"epochs": 1}})  # doctest: +SKIP
        >>> [m["role"] for m in report["models"]]  # doctest: +SKIP
        ['dense', 'unsafe baseline', 'deployed']
    """
    from tfsafe.compress.strip import strip  # noqa: PLC0415
    from tfsafe.metrics import model_size  # noqa: PLC0415
    from tfsafe.report import SafetyReport  # noqa: PLC0415
    from tfsafe.safety.evaluate import evaluate_safety  # noqa: PLC0415

    recipe = load_recipe(method, config)
    check_params(method, recipe["params"])
    if model is not None and not os.path.isfile(os.fspath(model)):
        raise InputError(f"--model file '{model}' does not exist.")
    settings = {"method": method, "data": data, "model": None if model is None else os.path.abspath(model),
                "recipe": recipe}
    state = RunState(out_dir, settings, resume=resume)
    seed = int(recipe["seed"])
    stages = StageRunner(state, seed=seed, verbose=verbose, log=log, data=data)
    splits = load_splits(data, data_dir, recipe["data"], seed)
    log(f"data: {data} {splits.sizes()}")
    _write_audit_sets(splits, stages, seed)

    dense, _ = stages.model_stage("dense", lambda: _dense_stage(model, splits, recipe["dense"], seed, verbose))
    compressed, info = RUNNERS[method](dense, splits, recipe["params"], stages)
    compressed_path = save_model(compressed, stages.path("compressed.keras"))
    deployable = strip(compressed)

    tflite_path = stages.path(f"compressed_{recipe['export']['mode']}.tflite")
    export = stages.json_stage("export", lambda: _export(compressed, splits, recipe["export"], tflite_path),
                               what=f"{recipe['export']['mode']} .tflite with a parity check")
    ev = recipe["evaluation"]

    def evaluate(target, source):
        return evaluate_safety(target, splits, source=source, reference=dense, eps=ev["eps"], steps=int(ev["steps"]),
                               restarts=int(ev["restarts"]), max_examples=ev["max_examples"],
                               membership_attacks=ev["membership_attacks"])

    what = "safety tests (clean, PGD, FGSM, corruptions, membership, safety set)"
    results = {
        "dense": stages.json_stage("evaluate_dense", lambda: evaluate(dense, None), what),
        "compressed": stages.json_stage("evaluate_compressed", lambda: evaluate(deployable, dense), what),
        "tflite": stages.json_stage("evaluate_tflite", lambda: evaluate(tflite_path, deployable),
                                    "black-box and transfer tests of the .tflite"),
    }
    report = SafetyReport(f"tfsafe compress: {method} on {data}", method=method, dataset=data,
                          splits=splits.sizes(), params=recipe["params"], run_record=RUN_FILE,
                          protocol="test split for accuracy/robustness; balanced members vs. never-used audit "
                                   "non-members for membership; worst case over attacks")
    report.add_evaluation("dense", "dense", results["dense"], size=model_size(dense))
    role = "unsafe baseline" if method == "baseline" else "compressed"
    size = model_size(compressed, reference=dense)
    over_ideal = export["bytes"] / size["ideal_bytes"] if size["ideal_bytes"] else None
    report.add_evaluation(method, role, results["compressed"], size=size,
                          method_info=info, path=relative(compressed_path, state.out_dir))
    report.add_evaluation(f"{method} {recipe['export']['mode']} .tflite", "deployed", results["tflite"],
                          file={"path": relative(tflite_path, state.out_dir), "bytes": export["bytes"],
                                "gzip_bytes": export["gzip_bytes"], "sparse_encoding": export["sparsity"],
                                "ideal_bytes": size["ideal_bytes"],
                                "tflite_over_ideal": over_ideal},
                          parity=export["parity"])
    report.meta["seconds"] = round(sum(s["seconds"] for s in state.stages.values()), 1)
    paths = report.save(state.out_dir)
    log(report.to_markdown())
    log("wrote " + ", ".join(paths))
    return report.to_dict()
