"""The ``tfsafe`` command line (absl): ``tfsafe <command> [--flags]``.

Commands:
  demo      train, prune (TF-MOT), export int8 and audit on bundled digits; write a report
  compress  compress a model with a method's recipe, export int8 .tflite, run the safety tests,
            write a report; --resume continues a killed run from its finished stages
  audit     membership audit of a .keras or .tflite model on member / non-member .npz files
  export    .keras -> int8 / dynamic / float16 / float32 .tflite (+ .onnx), checked against Keras
  bench     latency, size, memory and accuracy of .tflite files on this host or an Android device

Every bad flag or file ends in a one-line ``tfsafe: error: ...`` and exit status 2.
"""

import sys

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("out", "out", "Output folder for reports, models and exported files.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("epochs", 60, "demo: training epochs of the dense model.")
flags.DEFINE_integer("prune_epochs", 15, "demo: fine-tuning epochs while pruning.")
flags.DEFINE_float("target_sparsity", 0.8, "demo: TF-MOT pruning target.")
flags.DEFINE_string("model", None, "audit: a .keras/.h5 model or a .tflite file; compress: a trained .keras "
                    "model (default: train the recipe's dense model); export: a .keras model; bench: .tflite files.")
flags.DEFINE_string("members", None, "audit: .npz with arrays x, y drawn from the training data.")
flags.DEFINE_string("nonmembers", None, "audit: .npz with arrays x, y the model never saw.")
flags.DEFINE_enum("output_kind", None, ["logits", "probabilities"], "audit: what the model outputs, when the "
                  "model cannot say (a .tflite file without its side-car JSON whose last op is neither "
                  "SOFTMAX/LOGISTIC nor affine).")
flags.DEFINE_list("attacks", None, "Membership attacks (default: all for audit, the fast ones for demo).")
flags.DEFINE_integer("reference_models", 0, "audit: also run LiRA / offset with this many reference models "
                     "(same architecture as --model, trained on halves of members + non-members).")
flags.DEFINE_string("shard", "0/1", "audit: train only reference models j with j % n == i ('i/n'); run "
                    "every shard (on any workers sharing --reference_dir), then once more to merge.")
flags.DEFINE_string("reference_dir", None, "audit: folder for reference-model scores (default OUT/reference_models).")
flags.DEFINE_integer("reference_epochs", 20, "audit: training epochs of each reference model.")
# compress (tfsafe.pipeline)
flags.DEFINE_enum("method", None, ["safecompress", "atmc", "self_compress", "rlnet", "baseline", "dp_sgd"],
                  "compress: the method (baseline = TF-MOT pruning, the unsafe baseline).")
flags.DEFINE_enum("data", "digits", ["digits", "mnist", "fashion_mnist", "cifar10"], "compress: the dataset.")
flags.DEFINE_string("config", None, "compress: JSON file overriding the method's recipe "
                    "(tfsafe/recipes/<method>.json).")
flags.DEFINE_boolean("resume", False, "compress: continue the run in --out from its finished stages.")
flags.DEFINE_integer("verbose", 1, "compress: 1 shows Keras progress bars, 0 only stage lines.")
# export / bench (tflite_export.commands)
flags.DEFINE_list("modes", ["int8"], "export: TFLite modes to write (int8, dynamic, float16, float32).")
flags.DEFINE_string("dataset", "digits", "export/bench: data for calibration, parity and accuracy "
                    "(digits, mnist, fashion_mnist, cifar10); bench uses it only when given.")
flags.DEFINE_string("data_dir", None, "compress/export/bench: folder holding the dataset files (offline).")
flags.DEFINE_integer("calibration_samples", 500, "export: int8 calibration examples from the training split.")
flags.DEFINE_float("min_agreement", 0.99, "export: required top-1 agreement with Keras on the test split.")
flags.DEFINE_boolean("onnx", False, "export: also write an .onnx file (tf2onnx, checked with onnxruntime).")
flags.DEFINE_integer("opset", 17, "export: ONNX opset.")
flags.DEFINE_list("threads", ["1"], "bench: CPU thread counts.")
flags.DEFINE_list("xnnpack", ["on"], "bench: XNNPack settings to run: on, off or both.")
flags.DEFINE_integer("num_runs", 200, "bench: timed runs per configuration.")
flags.DEFINE_integer("warmup_runs", 20, "bench: untimed warm-up runs.")
flags.DEFINE_boolean("android", False, "bench: run TFLite's benchmark_model on an Android device over adb.")
flags.DEFINE_string("adb", None, "bench --android: adb binary (default: found on PATH).")
flags.DEFINE_string("serial", None, "bench --android: device serial when several are attached.")
flags.DEFINE_string("benchmark_binary", None, "bench --android: local benchmark_model to push to the device.")
flags.DEFINE_boolean("use_gpu", False, "bench --android: GPU delegate.")
flags.DEFINE_boolean("use_nnapi", False, "bench --android: NNAPI delegate.")
flags.DEFINE_boolean("op_profiling", False, "bench --android: per-op-type profile (--enable_op_profiling).")

COMMANDS = {}


def command(name, help_text):
    """Register ``fn(argv)`` as ``tfsafe <name>``."""

    def register(fn):
        COMMANDS[name] = (fn, help_text)
        return fn

    return register


@command("demo", "train, prune with TF-MOT, export int8 TFLite and audit membership on digits")
def _demo(argv):
    from tfsafe.demo import run_demo  # noqa: PLC0415
    from tfsafe.safety.membership import FAST_ATTACKS  # noqa: PLC0415

    run_demo(FLAGS.out, epochs=FLAGS.epochs, prune_epochs=FLAGS.prune_epochs,
             target_sparsity=FLAGS.target_sparsity, attacks=FLAGS.attacks or FAST_ATTACKS, seed=FLAGS.seed)


@command("compress", "compress with a method's recipe, export int8 .tflite, test safety, write report (--resume)")
def _compress(argv):
    from tfsafe.errors import InputError  # noqa: PLC0415
    from tfsafe.pipeline import compress_model  # noqa: PLC0415

    if not FLAGS.method:
        raise InputError("--method is required: safecompress, atmc, self_compress, rlnet, baseline or dp_sgd.")
    out = FLAGS.out if FLAGS["out"].present else f"out/{FLAGS.method}"
    compress_model(FLAGS.method, data=FLAGS.data, model=FLAGS.model, data_dir=FLAGS.data_dir, config=FLAGS.config,
                   out_dir=out, resume=FLAGS.resume, verbose=FLAGS.verbose)


def _load_npz_xy(path, flag):
    import os  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from tfsafe.errors import InputError  # noqa: PLC0415

    if not path:
        raise InputError(f"--{flag} is required: an .npz file with arrays x and y.")
    if not os.path.isfile(path):
        raise InputError(f"--{flag} file '{path}' does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["x"], data["y"]
    except KeyError as err:
        raise InputError(f"--{flag} file '{path}' must hold arrays named x and y.") from err
    except (OSError, ValueError) as err:
        raise InputError(f"--{flag} file '{path}' is not a readable .npz: {err}") from err


@command("audit", "membership audit of a .keras or .tflite model (needs --members and --nonmembers)")
def _audit(argv):
    import os  # noqa: PLC0415

    from tfsafe.errors import InputError  # noqa: PLC0415
    from tfsafe.io import atomic_write_json, load_model  # noqa: PLC0415
    from tfsafe.safety.membership import audit_membership  # noqa: PLC0415

    if not FLAGS.model:
        raise InputError("--model is required: a .keras/.h5 model or a .tflite file.")
    members = _load_npz_xy(FLAGS.members, "members")
    nonmembers = _load_npz_xy(FLAGS.nonmembers, "nonmembers")
    model = FLAGS.model if FLAGS.model.endswith(".tflite") else load_model(FLAGS.model)
    if FLAGS.model.endswith(".tflite") and not os.path.isfile(FLAGS.model):
        raise InputError(f"--model file '{FLAGS.model}' does not exist.")
    audit = audit_membership(model, members, nonmembers, attacks=FLAGS.attacks, seed=FLAGS.seed,
                             output=FLAGS.output_kind)
    if FLAGS.reference_models:
        if not audit_lira_rows(model, members, nonmembers, audit):
            return
    for row in audit.attacks:
        print(f"{row['attack']:>20}  AUC {row['auc']:.3f}  advantage {row['advantage']:.3f}  "
              f"TPR@1%FPR {row['tpr_at_1pct_fpr']:.3f}")
    worst = audit.worst
    print(f"{'worst case':>20}  AUC {worst['auc']:.3f}  advantage {worst['advantage']:.3f}  "
          f"TPR@1%FPR {worst['tpr_at_1pct_fpr']:.3f}  ({worst['attack']})")
    path = atomic_write_json(os.path.join(FLAGS.out, "audit.json"), audit.to_dict())
    print(f"wrote {path}")


def audit_lira_rows(model, members, nonmembers, audit):
    """Train this shard's reference models; once all exist, add LiRA / offset rows to ``audit``."""
    import glob  # noqa: PLC0415
    import os  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from tfsafe._keras import keras  # noqa: PLC0415
    from tfsafe.errors import InputError  # noqa: PLC0415
    from tfsafe.safety.lira import lira_audit, train_reference_models  # noqa: PLC0415
    from tfsafe.safety.membership import METRICS  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise InputError("--reference_models needs a Keras model (its architecture trains the reference "
                         "models); audit the .tflite without it, or pass the .keras model.")
    n = min(len(members[0]), len(nonmembers[0]))
    pool = (np.concatenate([members[0][:n], nonmembers[0][:n]]), np.concatenate([members[1][:n], nonmembers[1][:n]]))
    is_member = np.arange(2 * n) < n
    ref_dir = FLAGS.reference_dir or os.path.join(FLAGS.out, "reference_models")
    train_reference_models(model, pool, ref_dir, num_models=FLAGS.reference_models, shard=FLAGS.shard,
                           seed=FLAGS.seed, fit_kwargs={"epochs": FLAGS.reference_epochs})
    present = len(glob.glob(os.path.join(ref_dir, "ref_*.npz")))
    if present < FLAGS.reference_models:
        print(f"shard {FLAGS.shard} done: {present} of {FLAGS.reference_models} reference models in {ref_dir}; "
              "run the other shards, then run again to merge.")
        return False
    lira = lira_audit(model, pool, is_member, ref_dir)
    audit.attacks.extend(lira.attacks)
    for metric in METRICS:
        audit.worst[metric] = max(audit.worst[metric], lira.worst[metric])
    audit.worst["attack"] = max(audit.attacks, key=lambda r: r["auc"])["attack"]
    return True


@command("export", "export a .keras model to int8/dynamic/float16/float32 TFLite (+ ONNX) with parity checks")
def _export(argv):
    from tflite_export.commands import export_command  # noqa: PLC0415
    from tfsafe.errors import InputError  # noqa: PLC0415

    if not FLAGS.model:
        raise InputError("--model is required: a .keras/.h5 model to export.")
    export_command(FLAGS.model, FLAGS.out, modes=FLAGS.modes, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                   calibration_samples=FLAGS.calibration_samples, min_agreement=FLAGS.min_agreement,
                   onnx=FLAGS.onnx, opset=FLAGS.opset)


@command("bench", "benchmark .tflite files on this host (LiteRT) or on Android (--android, adb)")
def _bench(argv):
    import os  # noqa: PLC0415

    from tflite_export.commands import bench_command  # noqa: PLC0415
    from tfsafe.errors import InputError  # noqa: PLC0415

    if not FLAGS.model:
        raise InputError("--model is required: one or more .tflite files, comma-separated.")
    settings = {"on": True, "off": False}
    if not set(FLAGS.xnnpack) <= set(settings):
        raise InputError(f"--xnnpack takes on and/or off, got {FLAGS.xnnpack}.")
    try:
        threads = [int(t) for t in FLAGS.threads]
    except ValueError as err:
        raise InputError(f"--threads must be integers, got {FLAGS.threads}.") from err
    bench_command(FLAGS.model.split(","), out=os.path.join(FLAGS.out, "bench.json"),
                  dataset=FLAGS.dataset if FLAGS["dataset"].present else None, data_dir=FLAGS.data_dir,
                  threads=threads, xnnpack=[settings[v] for v in FLAGS.xnnpack], warmup_runs=FLAGS.warmup_runs,
                  num_runs=FLAGS.num_runs, android=FLAGS.android, adb=FLAGS.adb, serial=FLAGS.serial,
                  benchmark_binary=FLAGS.benchmark_binary, use_gpu=FLAGS.use_gpu, use_nnapi=FLAGS.use_nnapi,
                  enable_op_profiling=FLAGS.op_profiling)


def _usage():
    lines = ["usage: tfsafe <command> [--flags]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "tfsafe <command> --helpshort lists the flags."]
    return "\n".join(lines)


def _quiet_logs():
    """Keep TensorFlow's and absl's INFO chatter out of the user's terminal."""
    import logging as py_logging  # noqa: PLC0415

    from absl import logging  # noqa: PLC0415

    logging.set_verbosity(logging.WARNING)
    from tfsafe._keras import tf  # noqa: PLC0415

    tf.get_logger().setLevel(py_logging.ERROR)
    tf.autograph.set_verbosity(0)


def main(argv):
    from tfsafe.errors import TfsafeError  # noqa: PLC0415

    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = f"unknown command '{argv[1]}'. " if len(argv) >= 2 else ""
        print(f"tfsafe: error: {given}\n{_usage()}", file=sys.stderr)
        return 2
    if len(argv) > 2:
        print(f"tfsafe: error: unexpected arguments {argv[2:]}; flags start with --.", file=sys.stderr)
        return 2
    _quiet_logs()
    try:
        COMMANDS[argv[1]][0](argv)
    except TfsafeError as err:
        print(f"tfsafe: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfsafe: interrupted", file=sys.stderr)
        return 130
    return 0


def run():
    """Console-script entry point."""
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
