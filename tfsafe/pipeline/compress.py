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
5. ``report.json`` / ``report.md`` / ``report.html`` (rewritten on every run).

On ``resume`` a stage is skipped when it finished with the same settings and no stage before
it was redone; so a resume after changing only ``export`` redoes export and what follows.
The balanced audit sets are written to ``audit/members.npz`` and ``audit/nonmembers.npz``
so ``tfsafe audit`` can re-audit the ``.tflite`` (or a copy pulled from a phone) on them.

Splits come from one seeded permutation, so a resumed run sees the same data.
"""

import json
import os
import shutil
import time

import numpy as np

from tflite_export.convert import to_tflite
from tfsafe._keras import keras
from tfsafe.data import load_dataset, membership_split
from tfsafe.errors import InputError
from tfsafe.io import atomic_path, atomic_write_json, load_model, save_model, to_jsonable
from tfsafe.methods import StageCallback, get, rlnet_cnn
from tfsafe.metrics import model_size
from tfsafe.models import compile_classifier, lenet, mlp, small_cnn
from tfsafe.pipeline.run_state import RUN_FILE, RunState
from tfsafe.recipes import load_recipe
from tfsafe.report import SafetyReport
from tfsafe.safety.evaluate import DATASET_EPS, evaluate_safety
from tfsafe.validation import check_xy

__all__ = ["compress_model", "StageRunner", "load_splits", "dense_model", "method_params"]

ARCHITECTURES = {"small_cnn": small_cnn, "lenet": lenet, "mlp": mlp, "rlnet_cnn": rlnet_cnn}


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


def load_splits(data, data_dir, sizes, seed):
    """The protocol splits of dataset ``data`` (train + test files pooled, then split by seed)."""
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
    if architecture not in ARCHITECTURES:
        raise InputError(f"dense.architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}.")
    return ARCHITECTURES[architecture](input_shape=input_shape, num_classes=num_classes)


def method_params(params, data):
    """The recipe's ``params`` with a ``null`` ``eps`` replaced by the dataset's usual radius."""
    params = dict(params)
    if "eps" in params and params["eps"] is None:
        params["eps"] = float(DATASET_EPS[data])
    return params


def _dense_stage(model_path, splits, settings, seed, verbose):
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
    for name, (x, y) in zip(("members", "nonmembers"), splits.audit_sets(seed=seed)):
        path = stages.path("audit", f"{name}.npz")
        if not os.path.exists(path):
            with atomic_path(path) as tmp:
                np.savez_compressed(tmp, x=x, y=y)


def _export(compressed, splits, settings, path):
    x, _ = splits.train
    result = to_tflite(compressed, path, mode=settings["mode"],
                       representative_data=x[:int(settings["calibration_samples"])],
                       verify=splits.test, min_agreement=float(settings["min_agreement"]))
    return result.to_dict()


def compress_model(method, data="digits", model=None, data_dir=None, config=None, out_dir="out/compress",
                   resume=False, verbose=1, log=print):
    """Compress a model with one method, export it and write a safety report, resumably.

    Args:
        method: a registered method (:func:`tfsafe.methods.names`: ``safecompress``, ``atmc``,
            ``self_compress``, ``rlnet``, ``baseline`` = TF-MOT pruning, the unsafe baseline).
        data: ``digits`` (bundled), ``mnist``, ``fashion_mnist`` or ``cifar10``.
        model: path of a trained ``.keras`` / ``.h5`` model; ``None`` trains the recipe's
            dense model on the members first.
        data_dir: folder with the dataset files (offline use).
        config: overrides of the method's recipe (dict or JSON path); see :mod:`tfsafe.recipes`.
        out_dir: the run folder (models, ``.tflite``, evaluations, report, ``run.json``).
        resume: continue the run in ``out_dir``: stages done with the same settings are loaded.
        verbose: 1 shows Keras progress bars, 0 is quiet.
        log: where stage messages go.

    Returns:
        The report as a dict (what ``report.json`` holds).

    Raises:
        InputError: unknown method, recipe key or parameter, a missing model file, or a resume
            of a run on other data.

    Example:
        >>> report = compress_model("baseline", "digits", out_dir="/tmp/tfsafe-doc", verbose=0,
        ...                         config={"dense": {"epochs": 2}, "params": {"epochs": 1}})  # doctest: +SKIP
        >>> [m["role"] for m in report["models"]]  # doctest: +SKIP
        ['dense', 'unsafe baseline', 'deployed']
    """
    recipe = load_recipe(method, config)
    compressor = get(method, **method_params(recipe["params"], data))
    if model is not None and not os.path.isfile(os.fspath(model)):
        raise InputError(f"--model file '{model}' does not exist.")
    seed = int(recipe["seed"])
    identity = {"method": method, "data": data, "model": None if model is None else os.path.abspath(model),
                "seed": seed, "splits": recipe["data"]}
    state = RunState(out_dir, identity, resume=resume)
    stages = StageRunner(state, log=log)
    splits = load_splits(data, data_dir, recipe["data"], seed)
    log(f"data: {data} {splits.sizes()}")
    _write_audit_sets(splits, stages, seed)

    dense, _ = stages.model_stage("dense", {"dense": recipe["dense"]},
                                  lambda: _dense_stage(model, splits, recipe["dense"], seed, verbose))

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
                               lambda: _export(result.model, splits, export_settings, tflite_path),
                               what=f"{export_settings['mode']} .tflite with a parity check")
    ev = recipe["evaluation"]

    def evaluate(target, source):
        return evaluate_safety(target, splits, source=source, reference=dense, eps=ev["eps"], steps=int(ev["steps"]),
                               restarts=int(ev["restarts"]), max_examples=ev["max_examples"],
                               membership_attacks=ev["membership_attacks"])

    what = "safety tests (clean, PGD, FGSM, corruptions, membership, safety set)"
    depends = {"evaluation": ev}
    results = {
        "dense": stages.json_stage("evaluate_dense", depends, lambda: evaluate(dense, None), what),
        "compressed": stages.json_stage("evaluate_compressed", depends, lambda: evaluate(deployable, dense), what),
        "tflite": stages.json_stage("evaluate_tflite", depends, lambda: evaluate(tflite_path, deployable),
                                    "black-box and transfer tests of the .tflite"),
    }
    report = SafetyReport(f"tfsafe compress: {method} on {data}", method=method, dataset=data,
                          splits=splits.sizes(), params=result.config, run_record=RUN_FILE,
                          protocol="test split for accuracy/robustness; balanced members vs. never-used audit "
                                   "non-members for membership; worst case over attacks")
    report.add_evaluation("dense", "dense", results["dense"], size=model_size(dense))
    report.add_evaluation(method, compressor.role, results["compressed"],
                          size=model_size(result.model, reference=dense), method_info=result.info,
                          selection=result.selection, path=relative(compressed_path, state.out_dir))
    report.add_evaluation(f"{method} {export_settings['mode']} .tflite", "deployed", results["tflite"],
                          file={"path": relative(tflite_path, state.out_dir), "bytes": export["bytes"],
                                "gzip_bytes": export["gzip_bytes"], "sparse_encoding": export["sparsity"]},
                          parity=export["parity"])
    report.meta["seconds"] = round(sum(s["seconds"] for s in state.stages.values()), 1)
    paths = report.save(state.out_dir)
    log(report.to_markdown())
    log("wrote " + ", ".join(paths))
    return report.to_dict()
