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
  export    .keras -> int8 / dynamic / float16 / float32 .tflite (+ .onnx), calibrated and checked
            against Keras on --data, the preprocessing recorded in the side-car
  bench     latency, size, memory and accuracy (on --data) of .tflite files on this host or an
            Android device

audit, export and bench feed a model the way it was made: --normalization, else the record
saved with it (:mod:`tfsafe.preprocessing_record`), else its own Rescaling layer and the data.
"""

import functools
import glob
import json
import os
import sys
import warnings

import numpy as np

from tflite_export.benchmark import write_results
from tflite_export.commands import bench_command, export_command, format_bench_table
from tfsafe._keras import keras
from tfsafe.data import data_kind
from tfsafe.data_match import check_data_matches_model
from tfsafe.demo import run_demo
from tfsafe.errors import InputError
from tfsafe.io import load_model
from tfsafe.pipeline import compress_model
from tfsafe.preprocessing import InputRangeWarning, decide_preprocessing
from tfsafe.preprocessing_record import accuracy_check, audit_set_preprocessing, recorded_preprocessing
from tfsafe.recipes import load_recipe
from tfsafe.report import SafetyReport
from tfsafe.report_audit import AuditReport
from tfsafe.safety.lira import train_reference_models
from tfsafe.safety.membership import FAST_ATTACKS, audit_membership
from tfsafe.safety.reference_attacks import audit_pool, reference_audit
from tfsafe.safety.tflite_model import as_target, predict_labels
from tfsafe.user_data import load_user_data
from tfsafe.validation import model_num_classes
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
    "atmc": {"epochs": 2, "steps": 3, "select_steps": 5, "deploy_epochs": 0},
    "self_compress": {"epochs": 3},
    "rlnet": {"teacher_epochs": 2, "search_epochs": 3, "finetune_epochs": 2, "pgd_steps": 3},
    "dp_sgd": {"epochs": 3, "prune_epochs": 1},
}


def shows_input_warnings(command):
    """Run ``command(fv)`` showing :class:`~tfsafe.preprocessing.InputRangeWarning` lines.

    The front end silences Python warnings (TensorFlow's chatter); a value-range or
    preprocessing warning is about the user's data, so it is printed as one ``tfsafe: warning:``
    line on stderr, each message once.
    """
    @functools.wraps(command)
    def wrapped(fv):
        seen = set()

        def show(message, category, filename, lineno, file=None, line=None):
            if str(message) not in seen:
                seen.add(str(message))
                print(f"tfsafe: warning: {message}", file=sys.stderr)

        with warnings.catch_warnings():
            warnings.simplefilter("always", InputRangeWarning)
            warnings.showwarning = show
            return command(fv)

    return wrapped


def demo(fv):
    run_demo(fv.out, epochs=fv.epochs, prune_epochs=fv.prune_epochs, target_sparsity=fv.target_sparsity,
             attacks=fv.attacks or FAST_ATTACKS, seed=fv.seed, verbose=keras_verbose(fv.verbose))


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


def keras_verbose(verbose):
    """Keras ``fit`` verbosity for ``--verbose``: progress bars on a terminal, one line per epoch in a log.

    A progress bar written to a file or pipe is one line per update (tens of kilobytes per run).
    """
    if verbose == 0:
        return 0
    return 1 if sys.stdout.isatty() else 2


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


@shows_input_warnings
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
                            out_dir=out, resume=fv.resume, verbose=keras_verbose(fv.verbose),
                            label_column=fv.label_column, image_size=image_size(fv.image_size),
                            normalization=fv.normalization, kind=fv.kind,
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


def _load_data(fv):
    return load_user_data(fv.data, label_column=fv.label_column, image_size=image_size(fv.image_size),
                          normalization=fv.normalization, data_dir=getattr(fv, "data_dir", None),
                          kind=getattr(fv, "kind", None), split_column=getattr(fv, "split_column", None))


def _audit_sets(fv, model, given):
    """``(members, nonmembers, meta, preprocessing, kind)`` as the model takes them, preprocessed one way.

    The preprocessing is decided once: ``--normalization``, else the one recorded with the model
    (its side-car, or the compress run it came from), else the model's own Rescaling layer and
    the data (:func:`tfsafe.preprocessing.decide_preprocessing`).
    """
    keras_model = model if isinstance(model, keras.Model) else None
    recorded = recorded_preprocessing(fv.model)
    if fv.data is not None:
        data = _load_data(fv)
        if not data.has_split:
            raise InputError(f"--data '{fv.data}' is one pool (no x_train / x_test split), so which rows the model "
                             "was trained on is unknown; store x_train, y_train, x_test, y_test (or pass --members "
                             "and --nonmembers).")
        pre = data.preprocessing_for(keras_model, recorded=recorded)
        splits = data.splits(fv.seed, pre, validation_size=0)
        members, nonmembers = splits.audit_sets(seed=fv.seed)
        name, kind = data.name, data.kind
        audited = [line for line in splits.describe() if line.startswith(("train", "nonmembers"))]
        meta = {"data": data.describe(), "splits": audited}
    else:
        members, nonmembers = given
        # A compress run's audit/*.npz already hold model inputs: the run's record must not be applied again.
        recorded = audit_set_preprocessing(fv.members) or recorded
        pre = decide_preprocessing(members[0], fv.normalization, model=keras_model, recorded=recorded)
        members = (pre.apply(members[0], name=f"--members '{fv.members}'"), members[1])
        nonmembers = (pre.apply(nonmembers[0], name=f"--nonmembers '{fv.nonmembers}'"), nonmembers[1])
        name, meta, kind = f"'{fv.members}'", {}, data_kind(members[0], keras_model)
    loaded = model if keras_model is not None else as_target(model)
    checked = pre.expected_range is not None  # pre.apply has compared the inputs with it
    members = check_data_matches_model(loaded, *members, name=f"{name} members", range_checked=checked)
    nonmembers = check_data_matches_model(loaded, *nonmembers, name=f"{name} non-members", range_checked=checked)
    meta["preprocessing"] = pre.describe()
    return members, nonmembers, meta, pre, kind


def _classes(target):
    return model_num_classes(target) if isinstance(target, keras.Model) else int(target.num_classes)


def _accuracy_warning(target, x, y, pre, kind, output=None, show=True):
    """:func:`~tfsafe.preprocessing_record.accuracy_check` of ``target`` on ``(x, y)``; prints its warning."""
    check = accuracy_check(lambda v: predict_labels(target, v, output=output), x, y, _classes(target),
                           expected_range=pre.expected_range, kind=kind)
    if check["warn"] and show:
        print(f"warning: {check['message']}")
    return check


@shows_input_warnings
def audit(fv):
    given = None if fv.data else (_load_npz_xy(fv.members, "members"), _load_npz_xy(fv.nonmembers, "nonmembers"))
    if fv.model.endswith(".tflite"):
        if not os.path.isfile(fv.model):
            raise InputError(f"--model file '{fv.model}' does not exist.")
        model = fv.model
    else:
        model = load_model(fv.model)
    members, nonmembers, meta, pre, kind = _audit_sets(fv, model, given)
    print(f"preprocessing: {meta['preprocessing']}")
    result = audit_membership(model, members, nonmembers, attacks=fv.attacks, seed=fv.seed,
                              output=fv.output_kind)
    if fv.reference_models:
        result = audit_reference_attacks(fv, model, members, nonmembers, result)
        if result is None:
            return
    target = as_target(model)
    accuracy = {name: float(np.mean(predict_labels(target, x, output=fv.output_kind) == np.asarray(y).reshape(-1)))
                for name, (x, y) in (("members", members), ("nonmembers", nonmembers))}
    half = 256
    check = _accuracy_warning(target, np.concatenate([members[0][:half], nonmembers[0][:half]]),
                              np.concatenate([members[1][:half], nonmembers[1][:half]]), pre, kind, fv.output_kind,
                              show=False)
    print(f"accuracy of the audited model: members {accuracy['members']:.4f}, non-members "
          f"{accuracy['nonmembers']:.4f} (chance {check['chance']:.3f} for {_classes(target)} classes)")
    if check["warn"]:
        meta["preprocessing warning"] = check["message"]
        print(f"warning: {check['message']}")
    report = AuditReport(os.path.basename(fv.model), result.to_dict(), accuracy,
                         attacks_requested=fv.attacks or "all", reference_models=fv.reference_models, **meta)
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


def _held_out(data, seed, fraction=0.2, cap=2000):
    """``((x_a, y_a), (x_b, y_b))``: the data's own train/test split, else a seeded fifth (at most
    ``cap`` rows) of the pool held out as the second part."""
    if data.has_split:
        return (data.x_train, data.y_train), (data.x_test, data.y_test)
    n = len(data.x_train)
    k = min(cap, max(1, int(round(n * fraction)))) if n > 1 else 0
    order = np.random.default_rng(seed).permutation(n)
    rest, held = np.sort(order[k:]), np.sort(order[:k])
    if not len(rest):
        rest = held
    print(f"data: {data.name} is one pool; {len(held)} seeded random rows checked for parity, the other "
          f"{len(rest)} calibrate")
    return (data.x_train[rest], data.y_train[rest]), (data.x_train[held], data.y_train[held])


@shows_input_warnings
def export(fv):
    if not os.path.isfile(fv.model):
        raise InputError(f"--model file '{fv.model}' does not exist.")
    model = load_model(fv.model)
    data = _load_data(fv)
    pre = data.preprocessing_for(model, recorded=recorded_preprocessing(fv.model))
    (x, _), (xt, yt) = _held_out(data, fv.seed)
    x = pre.apply(x, name=f"{data.name} calibration data")
    xt = pre.apply(xt, name=f"{data.name} parity data")
    checked = pre.expected_range is not None
    x, _ = check_data_matches_model(model, x, name=f"{data.name} calibration data", range_checked=checked)
    xt, yt = check_data_matches_model(model, xt, yt, name=f"{data.name} parity data", range_checked=checked)
    print(f"data: {data.describe()}")
    print(f"preprocessing: {pre.describe()}")
    _accuracy_warning(model, xt, yt, pre, data.kind)
    export_command(fv.model, fv.out, modes=fv.modes, calibration_samples=fv.calibration_samples,
                   min_agreement=fv.min_agreement, max_accuracy_drop=fv.max_accuracy_drop,
                   confidence_margin=fv.confidence_margin, onnx=fv.onnx, opset=fv.opset, model=model,
                   calibration_data=x, verify_data=(xt, yt), normalization=pre.to_dict())


@shows_input_warnings
def bench(fv):
    settings = {"on": True, "off": False}
    options = dict(data_dir=fv.data_dir, threads=[int(t) for t in fv.threads],
                   xnnpack=[settings[v] for v in fv.xnnpack], warmup_runs=fv.warmup_runs, num_runs=fv.num_runs,
                   isolate=fv.isolate, android=fv.android, adb=fv.adb, serial=fv.serial,
                   benchmark_binary=fv.benchmark_binary, use_gpu=fv.use_gpu, use_nnapi=fv.use_nnapi,
                   enable_op_profiling=fv.op_profiling)
    out = os.path.join(fv.out, "bench.json")
    if fv.data is None or fv.android:
        if fv.data is not None:
            raise InputError("--data measures accuracy on this host; leave it out with --android.")
        bench_command(fv.model, out=out, **options)
        return
    data = _load_data(fv)
    x, y = (data.x_test, data.y_test) if data.has_split else (data.x_train, data.y_train)
    part = "its test part" if data.has_split else "all of it (one pool)"
    print(f"data: {data.describe()}; accuracy on {part}")
    results = []
    for path in fv.model:
        if not os.path.isfile(path):
            raise InputError(f"--model file '{path}' does not exist.")
        target = as_target(path)
        pre = data.preprocessing_for(None, recorded=recorded_preprocessing(path))
        name = f"{data.name} for '{os.path.basename(path)}'"
        xin, yin = check_data_matches_model(target, pre.apply(x, name=name), y, name=name,
                                            range_checked=pre.expected_range is not None)
        print(f"{os.path.basename(path)}: preprocessing: {pre.describe()}")
        _accuracy_warning(target, xin, yin, pre, data.kind)
        results += bench_command(path, out=None, data=(xin, yin), print_fn=lambda *_: None, **options)
    print(format_bench_table(results))
    print(f"wrote {write_results(results, out)}")
