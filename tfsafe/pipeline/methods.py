"""One runner per method for :func:`tfsafe.pipeline.compress_model`.

A runner takes the dense model, the protocol splits, the recipe's ``params`` and a
:class:`~tfsafe.pipeline.compress.StageRunner`; it returns ``(model, info)``: the compressed
model in the method's own form (wrappers, factors, masks: what the size is measured on) and a
JSON-able summary. Work that takes long runs inside ``stages.model_stage`` so a killed run
resumes after the last finished step.
"""

import inspect
import os

import numpy as np

from tfsafe._keras import keras, tfmot
from tfsafe.errors import InputError
from tfsafe.models import compile_classifier, copy_model

__all__ = ["RUNNERS", "check_params"]


def _eps(value, data):
    """The training radius: ``value``, or the dataset's usual one (:data:`DATASET_EPS`)."""
    from tfsafe.safety.evaluate import DATASET_EPS  # noqa: PLC0415

    return float(DATASET_EPS[data]) if value is None else float(value)


def _split(params, *names):
    """``params`` without ``names``, and the values of ``names``."""
    rest = {k: v for k, v in params.items() if k not in names}
    return rest, [params[n] for n in names]


def run_safecompress(dense, splits, params, stages):
    from tfsafe.methods.safecompress import SafeCompress  # noqa: PLC0415

    rest, (epochs, batch_size) = _split(params, "epochs", "batch_size")

    def build():
        method = SafeCompress(seed=stages.seed, verbose=int(stages.verbose > 0), **rest)
        result = method.fit(copy_model(dense), splits, epochs=int(epochs), batch_size=int(batch_size),
                            checkpoint_dir=stages.path("checkpoints", "safecompress"), resume=True)
        return result.model, {"rounds": len(result.history), "final": result.final,
                              "train_seconds": result.train_seconds}

    return stages.model_stage("safecompress", build)


def run_atmc(dense, splits, params, stages):
    from tfsafe.compress.factorization import factorize  # noqa: PLC0415
    from tfsafe.methods.atmc import atmc_compress, budget_for_ratio  # noqa: PLC0415

    rest, (ratio, bits, eps) = _split(params, "ratio", "bits", "eps")

    def build():
        keras.utils.set_random_seed(stages.seed)
        factorized = factorize(dense, bits=32)
        budget = budget_for_ratio(factorized, float(ratio), int(bits), reference=dense)
        if budget < 1:
            raise InputError(f"params.ratio={ratio} leaves no room for non-zeros at {bits} bits (biases and "
                             "uncompressed layers already exceed it); raise the ratio or the bits.")
        result = atmc_compress(factorized, *splits.train, budget=budget, bits=int(bits), eps=_eps(eps, stages.data),
                               validation_data=splits.validation, verbose=stages.verbose, **rest)
        return result.model, {"budget": int(budget), "best": result.best}

    return stages.model_stage("atmc", build)


def run_self_compress(dense, splits, params, stages):
    from tfsafe.methods.self_compress import self_compress  # noqa: PLC0415

    params = dict(params)
    pool = len(splits.validation[0])
    if params.get("safety_indices") is None and int(params.get("safety_size", 200)) > pool:
        stages.log(f"[self_compress] safety_size {params['safety_size']} > {pool} validation examples; using {pool}")
        params["safety_size"] = pool

    def build():
        result = self_compress(copy_model(dense), *splits.train, validation_data=splits.validation, seed=stages.seed,
                               verbose=stages.verbose, **params)
        return result.model, {"size": result.size, "safety_source": result.safety_source,
                              "monitor": {k: v for k, v in result.monitor.items() if k != "history"}}

    return stages.model_stage("self_compress", build)


def run_rlnet(dense, splits, params, stages):
    from tfsafe.compress.linearization import linearize, mask_relu_count  # noqa: PLC0415
    from tfsafe.methods.rlnet import finetune_student, search_robust_mask, train_robust_teacher  # noqa: PLC0415

    p = dict(params)
    eps = _eps(p.pop("eps"), stages.data)
    fraction = float(p.pop("relu_fraction"))
    common = {"eps": eps, "batch_size": int(p.pop("batch_size")), "pgd_steps": int(p.pop("pgd_steps"))}
    teacher_epochs, search_epochs, finetune_epochs = (int(p.pop(k)) for k in
                                                      ("teacher_epochs", "search_epochs", "finetune_epochs"))
    all_relus = mask_relu_count(linearize(dense))
    if not 0 < fraction <= 1:
        raise InputError(f"params.relu_fraction must be in (0, 1], got {fraction}.")
    budget = max(1, int(round(fraction * all_relus)))
    x, y = splits.train
    keras.utils.set_random_seed(stages.seed)

    teacher, _ = stages.model_stage("rlnet_teacher", lambda: (train_robust_teacher(
        dense, x, y, epochs=teacher_epochs, verbose=stages.verbose, **common), {}))
    search_keys = {"linear", "allocation", "penalty", "mask_learning_rate", "check_every", "learning_rate"}
    search = {k: p[k] for k in search_keys & set(p)}

    def build_student():
        student, schedule = search_robust_mask(teacher, x, y, budget, epochs=search_epochs,
                                                     verbose=stages.verbose, **common, **search)
        return student, {"relu_budget": budget, "search_reached": bool(schedule.reached)}

    student, _ = stages.model_stage("rlnet_search", build_student)

    def build_final():
        finetune_student(student, teacher, x, y, epochs=finetune_epochs, verbose=stages.verbose, **common)
        return student, {"relu_budget": budget, "relu_count": int(mask_relu_count(student)),
                         "all_relu_count": int(all_relus)}

    return stages.model_stage("rlnet_finetune", build_final)


def run_baseline(dense, splits, params, stages):
    def build():
        x, y = splits.train
        steps = int(params["epochs"]) * int(np.ceil(len(x) / int(params["batch_size"])))
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(params["target_sparsity"]), begin_step=0,
            end_step=max(1, int(steps * 0.7)), frequency=max(1, steps // 20))
        keras.utils.set_random_seed(stages.seed)
        pruned = tfmot.sparsity.keras.prune_low_magnitude(copy_model(dense), pruning_schedule=schedule)
        compile_classifier(pruned, float(params["learning_rate"])).fit(
            x, y, epochs=int(params["epochs"]), batch_size=int(params["batch_size"]), verbose=stages.verbose,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        return tfmot.sparsity.keras.strip_pruning(pruned), {}

    return stages.model_stage("tfmot_pruning", build)


RUNNERS = {
    "safecompress": run_safecompress,
    "atmc": run_atmc,
    "self_compress": run_self_compress,
    "rlnet": run_rlnet,
    "baseline": run_baseline,
}


def _accepted(method):
    """Parameter names ``params`` may hold for ``method`` beyond the recipe's own keys."""
    from tfsafe.methods.atmc import atmc_compress  # noqa: PLC0415
    from tfsafe.methods.safecompress import SafeCompress  # noqa: PLC0415
    from tfsafe.methods.self_compress import self_compress  # noqa: PLC0415

    def names(fn, drop=()):
        return {n for n, p in inspect.signature(fn).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in drop}

    data_args = ("model", "x", "y", "validation_data", "callbacks", "verbose", "seed")
    if method == "safecompress":
        return names(SafeCompress.__init__, ("self", "seed", "verbose", "safety_tests")) | {
            "epochs", "batch_size"}
    if method == "atmc":
        return names(atmc_compress, (*data_args, "budget")) | {"ratio"}
    if method == "self_compress":
        return names(self_compress, data_args)
    if method == "rlnet":
        return {"relu_fraction", "eps", "teacher_epochs", "search_epochs", "finetune_epochs", "batch_size",
                "pgd_steps", "linear", "allocation", "penalty", "mask_learning_rate", "check_every", "learning_rate"}
    return {"target_sparsity", "epochs", "batch_size", "learning_rate"}


def check_params(method, params):
    """Raise :class:`InputError` naming any key of ``params`` that ``method`` does not take."""
    unknown = sorted(set(params) - _accepted(method))
    if unknown:
        raise InputError(f"Unknown params for {method}: {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(_accepted(method)))}.")
    return params


def relative(path, root):
    """``path`` relative to ``root`` (what run.json records, so the folder can move)."""
    return os.path.relpath(path, root)
