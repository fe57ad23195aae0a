"""What each ``tfsafe`` command does once its flags parsed.

The front end (:mod:`tfsafe_cli`: flag sets, help, one-line errors, quiet logs) imports this
module only after a command's flags parsed, since it imports TensorFlow. Each function here
takes that command's parsed absl ``FlagValues``.

Commands:
  demo      train, prune (TF-MOT), export int8 and audit on bundled digits; write a report
  compress  compress a model with a method's recipe, export int8 .tflite, run the safety tests,
            write a report; --resume continues a killed run, --quick takes a first look
  audit     membership audit of a .keras or .tflite model on member / non-member .npz files, or
            on --data with the split it was trained on; writes audit.{json,md,html} with a verdict
  export    .keras -> int8 / dynamic / float16 / float32 .tflite (+ .onnx), checked against Keras
  bench     latency, size, memory and accuracy of .tflite files on this host or an Android device
"""

import glob
import json
import os

import numpy as np

from tflite_export.commands import bench_command, export_command
from tfsafe._keras import keras
from tfsafe.demo import run_demo
from tfsafe.errors import InputError
from tfsafe.io import load_model
from tfsafe.pipeline import compress_model
from tfsafe.preprocessing import decide_preprocessing
from tfsafe.recipes import load_recipe
from tfsafe.report import SafetyReport
from tfsafe.report_audit import AuditReport
from tfsafe.safety.lira import train_reference_models
from tfsafe.safety.membership import FAST_ATTACKS, audit_membership
from tfsafe.safety.reference_attacks import audit_pool, reference_audit
from tfsafe.safety.tflite_model import as_target, predict_labels
from tfsafe.user_data import check_data_matches_model, load_user_data
from tfsafe_cli import run  # console scripts installed from tfsafe <= 0.1 call tfsafe.cli:run
from tfsafe_cli.flagsets import image_size

__all__ = ["demo", "compress", "audit", "export", "bench", "QUICK_PRESET", "QUICK_TRAINING", "quick_preset",
           "quick_changes", "run"]

# `tfsafe compress --quick`: recipe overrides for a first look (the report states each value changed).
# QUICK_PRESET applies to every method; QUICK_TRAINING shrinks each built-in method's own training
# (every epochs / steps parameter of its recipe, `tests/test_cli_quick.py` checks that none is missed).
QUICK_PRESET = {
    "data": {"pool_size": 3000},
    "dense": {"epochs": 10},
    "evaluation": {"steps": 5, "restarts": 1, "max_examples": 200,
                   "membership_attacks": ["threshold", "entropy", "logistic_regression"], "masking_checks": False},
}
QUICK_TRAINING = {
    "baseline": {"epochs": 3},
    "safecompress": {"epochs": 3, "attack_epochs": 2},
    "atmc": {"epochs": 2, "steps": 3, "select_steps": 5},
    "self_compress": {"epochs": 3},
    "rlnet": {"teacher_epochs": 2, "search_epochs": 3, "finetune_epochs": 2, "pgd_steps": 3},
    "dp_sgd": {"epochs": 3, "prune_epochs": 1},
}


def demo(fv):
    run_demo(fv.out, epochs=fv.epochs, prune_epochs=fv.prune_epochs, target_sparsity=fv.target_sparsity,
             attacks=fv.attacks or FAST_ATTACKS, seed=fv.seed, verbose=min(fv.verbose, 1))


def _deep_merge(base, overrides):
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def _read_config(path):
    if not os.path.isfile(path):
        raise InputError(f"--config file '{path}' does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f"--config file '{path}' is not valid JSON: {err}") from err


def quick_preset(method):
    """The ``--quick`` recipe overrides for ``method``: :data:`QUICK_PRESET` and its training."""
    return _deep_merge(QUICK_PRESET, {"params": QUICK_TRAINING[method]} if method in QUICK_TRAINING else {})


def _leaves(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def quick_changes(method, config):
    """``{"section.key": {"recipe": value, "quick": value}}`` for each value ``--quick`` changes.

    ``config`` is the user's overrides (a dict); they win over the preset where both set a key,
    so only values the preset really changed are listed.
    """
    before = dict(_leaves(load_recipe(method, config)))
    after = dict(_leaves(load_recipe(method, _deep_merge(quick_preset(method), config))))
    return {key: {"recipe": before[key], "quick": value} for key, value in after.items() if value != before[key]}


def compress(fv):
    out = fv.out if fv["out"].present else f"out/{fv.method}"
    config = _read_config(fv.config) if fv.config else {}
    splits = {key: fv[key].value for key in ("validation_fraction", "reference_fraction") if fv[key].value is not None}
    if splits:  # the flags win over --config
        config = _deep_merge(config, {"data": splits})
    changes = quick_changes(fv.method, config) if fv.quick else None
    if fv.quick:
        config = _deep_merge(quick_preset(fv.method), config)
    report = compress_model(fv.method, data=fv.data, model=fv.model, data_dir=fv.data_dir, config=config or None,
                            out_dir=out, resume=fv.resume, verbose=min(fv.verbose, 1), label_column=fv.label_column,
                            image_size=image_size(fv.image_size), normalization=fv.normalization, kind=fv.kind,
                            split_column=fv.split_column)
    if fv.quick:
        restated = SafetyReport.from_dict(report)
        restated.meta["preset"] = ("quick (--quick): a first look with shrunken training and evaluation, not a "
                                   "final audit")
        restated.meta["quick overrides"] = {key: f"{v['recipe']} -> {v['quick']}" for key, v in changes.items()}
        restated.save(out)
        print(f"the report in {out} states the --quick preset: " + ", ".join(restated.meta["quick overrides"]))


def _load_npz_xy(path, flag):
    if not os.path.isfile(path):
        raise InputError(f"--{flag} file '{path}' does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["x"], data["y"]
    except KeyError as err:
        raise InputError(f"--{flag} file '{path}' must hold arrays named x and y.") from err
    except (OSError, ValueError) as err:
        raise InputError(f"--{flag} file '{path}' is not a readable .npz: {err}") from err


def _audit_sets(fv, model, given):
    """``(members, nonmembers, meta)`` as the model takes them, preprocessed one way."""
    keras_model = model if isinstance(model, keras.Model) else None
    if fv.data is not None:
        data = load_user_data(fv.data, label_column=fv.label_column, image_size=image_size(fv.image_size),
                              normalization=fv.normalization, kind=fv.kind, split_column=fv.split_column)
        if not data.has_split:
            raise InputError(f"--data '{fv.data}' is one pool (no x_train / x_test split), so which rows the model "
                             "was trained on is unknown; store x_train, y_train, x_test, y_test (or pass --members "
                             "and --nonmembers).")
        pre = data.preprocessing_for(keras_model)
        splits = data.splits(fv.seed, pre, validation_size=0)
        members, nonmembers = splits.audit_sets(seed=fv.seed)
        name = data.name
        audited = [line for line in splits.describe() if line.startswith(("train", "nonmembers"))]
        meta = {"data": data.describe(), "splits": audited}
    else:
        members, nonmembers = given
        pre = decide_preprocessing(members[0], fv.normalization, model=keras_model)
        members = (pre.apply(members[0], name=f"--members '{fv.members}'"), members[1])
        nonmembers = (pre.apply(nonmembers[0], name=f"--nonmembers '{fv.nonmembers}'"), nonmembers[1])
        name, meta = f"'{fv.members}'", {}
    loaded = model if keras_model is not None else as_target(model)
    members = check_data_matches_model(loaded, *members, name=f"{name} members")
    nonmembers = check_data_matches_model(loaded, *nonmembers, name=f"{name} non-members")
    meta["preprocessing"] = pre.describe()
    return members, nonmembers, meta


def audit(fv):
    given = None if fv.data else (_load_npz_xy(fv.members, "members"), _load_npz_xy(fv.nonmembers, "nonmembers"))
    if fv.model.endswith(".tflite"):
        if not os.path.isfile(fv.model):
            raise InputError(f"--model file '{fv.model}' does not exist.")
        model = fv.model
    else:
        model = load_model(fv.model)
    members, nonmembers, meta = _audit_sets(fv, model, given)
    result = audit_membership(model, members, nonmembers, attacks=fv.attacks, seed=fv.seed,
                              output=fv.output_kind)
    if fv.reference_models:
        result = audit_reference_attacks(fv, model, members, nonmembers, result)
        if result is None:
            return
    target = as_target(model)
    accuracy = {name: float(np.mean(predict_labels(target, x) == np.asarray(y).reshape(-1)))
                for name, (x, y) in (("members", members), ("nonmembers", nonmembers))}
    report = AuditReport(os.path.basename(fv.model), result.to_dict(), accuracy,
                         attacks_requested=fv.attacks or "all", reference_models=fv.reference_models, **meta)
    print(f"preprocessing: {meta['preprocessing']}")
    print(f"accuracy of the audited model: members {accuracy['members']:.4f}, non-members "
          f"{accuracy['nonmembers']:.4f} (far below the model's usual accuracy: check the preprocessing)")
    print(report.to_text())
    print("wrote " + ", ".join(report.save(fv.out)))


def audit_reference_attacks(fv, model, members, nonmembers, result):
    """Train this shard's reference models; once all exist, return ``result`` with LiRA and RMIA
    (online and offline) merged in as the headline, else ``None``."""
    if not isinstance(model, keras.Model):
        raise InputError("--reference_models needs a Keras model (its architecture trains the reference "
                         "models); audit the .tflite without it, or pass the .keras model.")
    pool, is_member = audit_pool(members, nonmembers)
    ref_dir = fv.reference_dir or os.path.join(fv.out, "reference_models")
    train_reference_models(model, pool, ref_dir, num_models=fv.reference_models, shard=fv.shard,
                           seed=fv.seed, fit_kwargs={"epochs": fv.reference_epochs})
    present = len(glob.glob(os.path.join(ref_dir, "ref_*.npz")))
    if present < fv.reference_models:
        print(f"shard {fv.shard} done: {present} of {fv.reference_models} reference models in {ref_dir}; "
              "run the other shards, then run again to merge.")
        return None
    return result.merge(reference_audit(model, pool, is_member, ref_dir, output=fv.output_kind))


def export(fv):
    export_command(fv.model, fv.out, modes=fv.modes, dataset=fv.dataset, data_dir=fv.data_dir,
                   calibration_samples=fv.calibration_samples, min_agreement=fv.min_agreement,
                   max_accuracy_drop=fv.max_accuracy_drop, confidence_margin=fv.confidence_margin,
                   onnx=fv.onnx, opset=fv.opset)


def bench(fv):
    settings = {"on": True, "off": False}
    bench_command(fv.model, out=os.path.join(fv.out, "bench.json"), dataset=fv.dataset, data_dir=fv.data_dir,
                  threads=[int(t) for t in fv.threads], xnnpack=[settings[v] for v in fv.xnnpack],
                  warmup_runs=fv.warmup_runs, num_runs=fv.num_runs, isolate=fv.isolate, android=fv.android,
                  adb=fv.adb, serial=fv.serial, benchmark_binary=fv.benchmark_binary, use_gpu=fv.use_gpu,
                  use_nnapi=fv.use_nnapi, enable_op_profiling=fv.op_profiling)
