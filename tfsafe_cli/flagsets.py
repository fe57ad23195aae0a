"""The flags of each ``tfsafe`` command, one absl ``FlagValues`` per command.

This module imports absl only (no TensorFlow), so ``tfsafe <command> --help`` and flag
errors answer at once. Each ``define_<command>(fv)`` adds that command's flags to ``fv``;
:func:`flag_values` builds a fresh set for one command.

Parity defaults (``--min_agreement``, ``--max_accuracy_drop``, ``--confidence_margin``) are
left ``None`` here and mean "the library default" (``tflite_export.parity.ParityRule``), so
``export``, ``compress`` and ``to_tflite`` share one rule; the help text quotes it
(``tests/test_cli.py`` checks that the quoted numbers are the library's).
"""

from absl import flags

__all__ = ["COMMANDS", "COMMON_FLAGS", "flag_values", "PARITY_HELP"]

METHODS = ["safecompress", "atmc", "self_compress", "rlnet", "baseline", "dp_sgd"]
DATASETS = ["digits", "mnist", "fashion_mnist", "cifar10"]
TFLITE_MODES = ["int8", "dynamic", "float16", "float32", "int4", "learned"]
NORMALIZATIONS = ["auto", "0-1", "-1-1", "none", "mean_std"]  # tfsafe.preprocessing.NORMALIZATIONS
DATA_KINDS = ["tabular", "image", "sequence"]  # tfsafe.data.DATA_KINDS
COMMON_FLAGS = ("out", "seed", "verbose")

# Numbers quoted in the help; the library's ParityRule defaults are the source of truth.
PARITY_HELP = {
    "min_agreement": "top-1 agreement with Keras required on the examples Keras is confident about "
                     "(default: the library's, 0.99).",
    "max_accuracy_drop": "largest test-accuracy drop always allowed, Keras -> exported file; a larger one "
                         "fails when a sign test on the examples only one model gets right says it is not "
                         "chance (default: the library's, 0.01).",
    "confidence_margin": "an example is 'confident' when the Keras model's top-1 probability exceeds the "
                         "runner-up's by this much (default: the library's, 0.1).",
}


def _required(fv, name, message):
    flags.register_validator(name, lambda value: value is not None and value != [], message=message,
                             flag_values=fv)


def _common(fv):
    flags.DEFINE_string("out", "out", "Output folder for reports, models and exported files.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=fv)
    flags.DEFINE_integer("verbose", 1, "0: tfsafe's stage lines only; 1: also Keras progress (bars on a terminal, one "
                         "line per epoch in a log); 2: also "
                         "TensorFlow's, absl's and the converter's own log lines.", flag_values=fv,
                         lower_bound=0, upper_bound=2)


def _user_data(fv, what):
    flags.DEFINE_string("label_column", None, "--data is a .csv: the column holding the labels (every other column "
                        "is a numeric feature).", flag_values=fv)
    flags.DEFINE_list("image_size", None, "--data is an image folder: HEIGHT,WIDTH (or one number) every image is "
                      "resized to (default: the first image's size).", flag_values=fv)
    flags.register_validator("image_size", lambda v: v is None or (len(v) in (1, 2) and all(
        t.strip().isdigit() and int(t) > 0 for t in v)), message="--image_size takes HEIGHT,WIDTH or one positive "
        "number, e.g. --image_size=32,32.", flag_values=fv)
    flags.DEFINE_enum("normalization", None, NORMALIZATIONS, "How stored values become model inputs (default auto: "
                      "8-bit images scaled to [0, 1] unless the model has its own Rescaling layer; other data fed as "
                      f"stored). Decided once and recorded; {what}.", flag_values=fv)
    flags.DEFINE_enum("kind", None, DATA_KINDS, "What --data holds, instead of the guess from shape and dtype "
                      "(e.g. tabular for an integer count table, else taken for token sequences).", flag_values=fv)
    flags.DEFINE_string("split_column", None, "--data is a .csv: the column saying train or test per row (rows "
                        "'train' become x_train, the model's members; 'test' x_test).", flag_values=fv)


def _fraction_flag(fv, name, help_text):
    flags.DEFINE_float(name, None, help_text, flag_values=fv)
    flags.register_validator(name, lambda v: v is None or 0 <= v < 1, message=f"--{name} takes a fraction in "
                             "[0, 1), e.g. 0.1.", flag_values=fv)


def image_size(value):
    """``--image_size`` as ``(height, width)``, or None."""
    if not value:
        return None
    sizes = [int(v) for v in value]
    return (sizes[0], sizes[-1])


def define_demo(fv):
    flags.DEFINE_integer("epochs", 60, "Training epochs of the dense model.", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("prune_epochs", 15, "Fine-tuning epochs of TF-MOT pruning and of the tfsafe method "
                         "(MIA-SafeCompress).", flag_values=fv, lower_bound=1)
    flags.DEFINE_float("target_sparsity", 0.8, "Sparsity of TF-MOT pruning and of MIA-SafeCompress (the same, so "
                       "the two compare at one size).", flag_values=fv, lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_list("attacks", None, "Membership attacks (default: the fast ones).", flag_values=fv)


def define_compress(fv):
    flags.DEFINE_enum("method", None, METHODS, "The method (baseline = TF-MOT pruning, the unsafe baseline). "
                      "Required.", flag_values=fv)
    _required(fv, "method", "--method is required: one of " + ", ".join(METHODS) + ".")
    flags.DEFINE_string("data", "digits", "Your data: an .npz with x, y (one pool) or x_train, y_train, x_test, "
                        "y_test (the split your model was trained on: members only from x_train), a .csv (with "
                        "--label_column), a folder with one sub-folder of images per class (--image_size); or "
                        "a built-in dataset: " + ", ".join(DATASETS) + ".", flag_values=fv)
    flags.DEFINE_string("model", None, "A trained .keras model (default: train the recipe's dense model).",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Built-in datasets: the file, or the folder holding one set of files "
                        "(offline).", flag_values=fv)
    _user_data(fv, "also written to the .tflite side-car")
    _fraction_flag(fv, "validation_fraction", "Data with its own train/test split: the fraction of x_train held out "
                   "from fine-tuning for validation (recipe data.validation_fraction; default 0.1).")
    _fraction_flag(fv, "reference_fraction", "Data with its own train/test split: the fraction of x_test kept as "
                   "reference non-members for simulated attackers (recipe data.reference_fraction; default 0.2).")
    flags.DEFINE_string("config", None, "JSON file overriding the method's recipe (tfsafe/recipes/<method>.json).",
                        flag_values=fv)
    flags.DEFINE_boolean("resume", False, "Continue the run in --out from its finished stages.", flag_values=fv)
    flags.DEFINE_boolean("quick", False, "A first look: the 'quick' preset shrinks the data pool, training and "
                         "evaluation (fewer examples, PGD steps, attacks); the report says so.", flag_values=fv)


def define_audit(fv):
    flags.DEFINE_string("model", None, "A .keras/.h5 model or a .tflite file. Required.", flag_values=fv)
    _required(fv, "model", "--model is required: a .keras/.h5 model or a .tflite file.")
    flags.DEFINE_string("members", None, ".npz with arrays x, y drawn from the training data (or give --data).",
                        flag_values=fv)
    flags.DEFINE_string("nonmembers", None, ".npz with arrays x, y the model never saw (or give --data).",
                        flag_values=fv)
    flags.DEFINE_string("data", None, "Instead of --members / --nonmembers: data with the split the model was "
                        "trained on (an .npz with x_train, y_train, x_test, y_test; a .csv with --label_column; an "
                        "image folder with train/ and test/ sub-folders): members from x_train, non-members from "
                        "x_test.", flag_values=fv)
    flags.register_multi_flags_validator(
        ["members", "nonmembers", "data"],
        lambda v: (v["data"] is None) == (v["members"] is not None and v["nonmembers"] is not None)
        and (v["data"] is None or (v["members"] is None and v["nonmembers"] is None)),
        message="give either --data (with x_train / x_test) or both --members and --nonmembers (.npz files with "
                "arrays x and y).", flag_values=fv)
    _user_data(fv, "applied to members and non-members alike")
    flags.DEFINE_list("attacks", None, "Membership attacks (default: all).", flag_values=fv)
    flags.DEFINE_enum("output_kind", None, ["logits", "probabilities"], "What the model outputs, when the model "
                      "cannot say (a .tflite file without its side-car JSON whose last op is neither "
                      "SOFTMAX/LOGISTIC nor affine).", flag_values=fv)
    flags.DEFINE_integer("reference_models", 0, "Also run LiRA / offset with this many reference models (same "
                         "architecture as --model, trained on halves of members + non-members).", flag_values=fv,
                         lower_bound=0)
    flags.DEFINE_string("shard", "0/1", "Train only reference models j with j % n == i ('i/n'); run every shard "
                        "(on any workers sharing --reference_dir), then once more to merge.", flag_values=fv)
    flags.DEFINE_string("reference_dir", None, "Folder for reference-model scores (default OUT/reference_models).",
                        flag_values=fv)
    flags.DEFINE_integer("reference_epochs", 20, "Training epochs of each reference model.", flag_values=fv,
                         lower_bound=1)


def _parity(fv):
    flags.DEFINE_float("min_agreement", None, PARITY_HELP["min_agreement"], flag_values=fv,
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("max_accuracy_drop", None, PARITY_HELP["max_accuracy_drop"], flag_values=fv,
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("confidence_margin", None, PARITY_HELP["confidence_margin"], flag_values=fv,
                       lower_bound=0.0, upper_bound=1.0)


def define_export(fv):
    flags.DEFINE_string("model", None, "A .keras/.h5 model to export. Required.", flag_values=fv)
    _required(fv, "model", "--model is required: a .keras/.h5 model to export.")
    flags.DEFINE_list("modes", ["int8"], "TFLite modes to write, comma-separated (" + ", ".join(TFLITE_MODES)
                      + "); each is written or refused on its own.", flag_values=fv)
    flags.register_validator("modes", lambda v: bool(v) and set(v) <= set(TFLITE_MODES),
                             message="--modes takes a comma-separated subset of " + ", ".join(TFLITE_MODES) + ".",
                             flag_values=fv)
    flags.DEFINE_string("data", "digits", "Data for int8 calibration (x_train) and the parity check (x_test): an "
                        ".npz with x_train, y_train, x_test, y_test (or x, y: a seeded fifth, at most 2000 rows, is "
                        "held out for parity), a .csv (with --label_column), a folder with one sub-folder of images "
                        "per class (--image_size); or a built-in dataset: " + ", ".join(DATASETS) + ".",
                        flag_values=fv)
    flags.DEFINE_alias("dataset", "data", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Built-in datasets: the file, or the folder holding one set of files "
                        "(offline).", flag_values=fv)
    _user_data(fv, "applied to calibration and parity data and written to the side-car (default: the record of a "
                   "compress run folder the model lies in, else decided from the data and the model)")
    flags.DEFINE_integer("calibration_samples", 500, "int8 calibration examples from the training split.",
                         flag_values=fv, lower_bound=1)
    _parity(fv)
    flags.DEFINE_boolean("onnx", False, "Also write an .onnx file (tf2onnx, checked with onnxruntime).",
                         flag_values=fv)
    flags.DEFINE_integer("opset", 17, "ONNX opset.", flag_values=fv)


def define_bench(fv):
    flags.DEFINE_list("model", None, ".tflite files, comma-separated. Required.", flag_values=fv)
    _required(fv, "model", "--model is required: one or more .tflite files, comma-separated.")
    flags.DEFINE_string("data", None, "Labelled data for accuracy (host only; default: none): an .npz (x_test, "
                        "y_test of a split one, else all of x, y), a .csv (with --label_column), a folder with one "
                        "sub-folder of images per class (--image_size); or a built-in dataset (its test split): "
                        + ", ".join(DATASETS) + ".", flag_values=fv)
    flags.DEFINE_alias("dataset", "data", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Built-in datasets: the file, or the folder holding one set of files "
                        "(offline).", flag_values=fv)
    _user_data(fv, "default: each file's side-car record, else decided from the data")
    flags.DEFINE_list("threads", ["1"], "CPU thread counts.", flag_values=fv)
    flags.register_validator("threads", lambda v: all(t.isdigit() and int(t) >= 1 for t in v),
                             message="--threads takes positive integers, e.g. --threads=1,4.", flag_values=fv)
    flags.DEFINE_list("xnnpack", ["on"], "XNNPack settings to run: on, off or both.", flag_values=fv)
    flags.register_validator("xnnpack", lambda v: bool(v) and set(v) <= {"on", "off"},
                             message="--xnnpack takes on and/or off.", flag_values=fv)
    flags.DEFINE_integer("num_runs", 200, "Timed runs per configuration.", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("warmup_runs", 20, "Untimed warm-up runs.", flag_values=fv, lower_bound=0)
    flags.DEFINE_boolean("isolate", True, "Host: measure each file in its own process, so peak-memory columns "
                         "compare (--noisolate runs them all here).", flag_values=fv)
    flags.DEFINE_boolean("android", False, "Run TFLite's benchmark_model on an Android device over adb.",
                         flag_values=fv)
    flags.DEFINE_string("adb", None, "--android: adb binary (default: found on PATH).", flag_values=fv)
    flags.DEFINE_string("serial", None, "--android: device serial when several are attached.", flag_values=fv)
    flags.DEFINE_string("benchmark_binary", None, "--android: local benchmark_model to push to the device.",
                        flag_values=fv)
    flags.DEFINE_boolean("use_gpu", False, "--android: GPU delegate.", flag_values=fv)
    flags.DEFINE_boolean("use_nnapi", False, "--android: NNAPI delegate.", flag_values=fv)
    flags.DEFINE_boolean("op_profiling", False, "--android: per-op-type profile (--enable_op_profiling).",
                         flag_values=fv)


# name -> (one-line help, flag definitions)
COMMANDS = {
    "demo": ("dense vs TF-MOT pruning vs MIA-SafeCompress on bundled digits: accuracy, adversarial accuracy, "
             "membership, int8 TFLite, report", define_demo),
    "compress": ("compress with a method's recipe, export int8 .tflite, test safety, write a report (--resume, "
                 "--quick)", define_compress),
    "audit": ("membership audit of a .keras or .tflite model on member / non-member .npz files; writes a report",
              define_audit),
    "export": ("export a .keras model to int8 / dynamic / float16 / float32 TFLite (+ ONNX), checked against "
               "Keras", define_export),
    "bench": ("latency, size, memory and accuracy of .tflite files on this host or an Android device",
              define_bench),
}


def flag_values(command):
    """A fresh ``FlagValues`` holding ``command``'s flags and the common ones."""
    fv = flags.FlagValues()
    _common(fv)
    COMMANDS[command][1](fv)
    return fv
