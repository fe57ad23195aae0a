"""ATMC: adversarially trained model compression (Gui et al., NeurIPS 2019), solved with ADMM.

Each compressed layer is factorized as ``W = (B + I) A + C``
(:mod:`tfsafe.compress.factorization`). Training minimizes

    0.5 CE(clean) + 0.5 CE(PGD) + (rho / 2) sum_i ||theta_i - Z_i + U_i||^2

over the factors ``theta = {A, B, C}`` of every layer, where

- every batch, after the optimizer step, ``theta`` is projected onto the budget: the ``k``
  largest magnitudes over all factors of all layers are kept (global top-k), with a per-layer
  floor so that no layer is emptied (:func:`topk_masks`);
- every ``N`` batches (:class:`ADMMUpdate`), ``Z = kmeans(theta + U)`` on the support of
  ``theta`` with ``2^bits`` non-zero centres and a fixed zero per tensor
  (:func:`kmeans_quantize`), then ``U += theta - Z``, and ``rho`` grows on a schedule;
- at the end the model is hard-projected (prune to ``k``, snap every factor onto its
  k-means codebook), and :class:`BestProjectedCheckpoint` keeps the projected model with the
  best selection score (validation PGD accuracy by default).

``bits=32`` skips quantization (ATMC-32bit); ``budget=None`` skips pruning. The same
:class:`ATMCModel` trains the paper's baselines (see :mod:`tfsafe.methods.atmc_baselines`).

What ships is one merged kernel per layer, so a final ``deploy`` stage puts the budget on it
(:mod:`tfsafe.methods.atmc_deploy`): merge, global top-k over the merged kernels, one k-means
codebook per kernel, then ``deploy_epochs`` of adversarial fine-tuning with the mask and the
codebook fixed. ``attack`` chooses how training examples are crafted (PGD as in the paper,
or the fast FGSM-RS / free training, watched by a catastrophic-overfitting guard), and
``pretrained_robust=True`` fine-tunes a given adversarially trained model at the full eps
from the first step, as the paper does, instead of ramping eps up from 0.
"""

import dataclasses
import warnings

from tfsafe import metrics
from tfsafe._keras import keras
from tfsafe.compress.factorization import factorize, matrix_layers
from tfsafe.errors import InputError
from tfsafe.methods.atmc_callbacks import ADMMUpdate, BestProjectedCheckpoint
from tfsafe.methods.atmc_deploy import DeployFineTuneModel, project_merged, sparse_plus_low_rank_layers
from tfsafe.methods.atmc_model import ATMCModel, check_budget
from tfsafe.methods.atmc_projection import (
    budget_for_ratio,
    compressible_groups,
    kmeans_quantize,
    topk_masks,
)
from tfsafe.methods.base import CompressionMethod, check_int, check_number, default_eps, nonempty
from tfsafe.models import copy_model
from tfsafe.safety.adversarial_training import TRAIN_ATTACKS, CatastrophicOverfittingGuard, EpsilonRamp
from tfsafe.safety.robust_accuracy import adversarial_accuracy
from tfsafe.validation import check_xy

__all__ = [
    "ATMC", "ATMCModel", "ADMMUpdate", "BestProjectedCheckpoint", "ATMCResult", "atmc_train", "atmc_compress",
    "compressible_groups", "topk_masks", "kmeans_quantize", "budget_for_ratio", "deploy_merged",
]

GUARD_EXAMPLES = 256  # held-out validation examples the catastrophic-overfitting guard attacks


def _guard(atmc, validation_data, eps, attack):
    """A :class:`CatastrophicOverfittingGuard` for fast training on validation data, else ``None``."""
    if attack == "pgd" or validation_data is None or atmc.adv_weight == 0 or eps <= 0:
        return None
    xv, yv = validation_data
    return CatastrophicOverfittingGuard(xv[:GUARD_EXAMPLES], yv[:GUARD_EXAMPLES], eps=eps, steps=10, action="pgd")


def _fit(trainer, x, y, validation_data, eps, epochs, batch_size, select_steps, tests, attack, cbs, callbacks,
         verbose, check_start=False):
    """``trainer.fit`` with the best projected checkpoint and the guard; returns ``(history, checks, best, guard)``."""
    checkpoint = None
    if validation_data is not None:
        checkpoint = BestProjectedCheckpoint(validation_data, eps=eps, steps=select_steps, tests=tests,
                                             check_start=check_start)
        cbs.append(checkpoint)
    guard = _guard(trainer, validation_data, eps, attack)
    if guard is not None:
        cbs.append(guard)
    history = trainer.fit(x, y, epochs=int(epochs), batch_size=int(batch_size), verbose=verbose,
                          callbacks=cbs + list(callbacks or []))
    if checkpoint is None:
        trainer.hard_project()
    checks = checkpoint.history if checkpoint else []
    best = {k: v for k, v in (checkpoint.best or {}).items() if k != "weights"} if checkpoint else {}
    guard_info = {"records": guard.records, "triggered_epoch": guard.triggered_epoch} if guard else None
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}, checks, best, guard_info


def _train(net, x, y, validation_data, budget, bits, eps, epochs, batch_size, steps, learning_rate, adv_weight,
           rho, rho_growth, rho_max, admm_every, ramp_epochs, select_steps, min_layer_fraction, fixed_mask, tests,
           callbacks, verbose, attack="pgd"):
    """Train ``net`` in place with ATMC; returns ``(history, checks, best, guard)``."""
    atmc = ATMCModel(net, eps=eps, steps=steps, budget=budget, bits=bits, adv_weight=adv_weight, rho=rho,
                     min_layer_fraction=min_layer_fraction, fixed_mask=fixed_mask, attack=attack)
    atmc.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=["accuracy"])
    cbs = [ADMMUpdate(every=admm_every, rho_growth=rho_growth, rho_max=rho_max)]
    if adv_weight > 0 and ramp_epochs > 0:
        cbs.append(EpsilonRamp(ramp_epochs=ramp_epochs))
    if validation_data is not None:
        validation_data = check_xy(net, *validation_data, name="validation")
    return _fit(atmc, x, y, validation_data, eps, epochs, batch_size, select_steps, tests, attack, cbs, callbacks,
                verbose)


def _sizes(net, dense):
    return {"factors_ideal_bytes": metrics.ideal_bytes(metrics.weight_stats(net)),
            "deployed_ideal_bytes": metrics.ideal_bytes(metrics.deployed_stats(net)),
            "dense_bytes": 4.0 * metrics.count_params(metrics.deployed_stats(dense))}


def deploy_merged(net, x, y, budget, bits, eps, epochs=1, validation_data=None, batch_size=128, steps=10,
                  learning_rate=5e-4, adv_weight=0.5, attack="pgd", min_layer_fraction=0.01, select_steps=20,
                  tests=None, dense=None, callbacks=None, verbose=0):
    """ATMC's deploy stage on a trained factorized ``net`` (in place); see :mod:`tfsafe.methods.atmc_deploy`.

    Merges ``W = (B + I) A + C``, keeps the ``budget`` largest merged values (per-layer floors of
    ``min_layer_fraction``), snaps each kernel onto a ``2^bits``-entry k-means codebook with a
    fixed zero, then fine-tunes ``epochs`` epochs adversarially (``attack``) with the mask and
    codebook fixed, keeping the best projected epoch on ``validation_data``. Afterwards
    ``strip(net)`` ships exactly ``A``: at most ``budget`` non-zeros on one codebook per layer.

    Args:
        net: The factorized model ATMC trained.
        x, y: Training data.
        budget: Non-zeros of all merged kernels together, or ``None`` (no pruning).
        bits: 1..8 or 32 (no quantization).
        eps, steps, adv_weight, attack, learning_rate, batch_size: The fine-tune.
        epochs: Fine-tune epochs (0: merge and project only).
        validation_data, select_steps, tests: Best projected epoch (see
            :class:`BestProjectedCheckpoint`); without them the last epoch is kept.
        dense: The dense model the sizes are relative to (default: ``net`` as merged).
        callbacks, verbose: Keras callbacks and verbosity.

    Returns:
        A JSON-able dict: ``before`` / ``after`` sizes (``factors_ideal_bytes``: ATMC's own
        form; ``deployed_ideal_bytes``: the merged kernels ``strip()`` ships), ``layers``
        (non-zeros and codebook entries per kernel), ``history``, ``checks``, ``best``, ``guard``.
    """
    dense = net if dense is None else dense
    before = _sizes(net, dense)
    layers = project_merged(net, budget, bits, min_layer_fraction)
    out = {"before": before, "layers": layers, "budget": budget, "bits": bits, "epochs": int(epochs),
           "history": {}, "checks": [], "best": {}, "guard": None}
    if int(epochs) > 0:
        trainer = DeployFineTuneModel(net, eps=eps, steps=steps, adv_weight=adv_weight, attack=attack)
        trainer.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=["accuracy"])
        if validation_data is not None:
            validation_data = check_xy(net, *validation_data, name="validation")
        out["history"], out["checks"], out["best"], out["guard"] = _fit(
            trainer, x, y, validation_data, eps, epochs, batch_size, select_steps, tests, attack, [], callbacks,
            verbose, check_start=True)
    out["after"] = _sizes(net, dense)
    return out


class ATMC(CompressionMethod):
    """ATMC as a compression method (see the module docstring).

    Stages: ``factorize`` (``W = (B + I) A + C`` for every Dense / Conv2D, and the non-zero
    budget of ``ratio``), ``train`` (adversarial training under the budget with ADMM k-means
    quantization; the projected checkpoint with the best selection score is kept) and
    ``deploy`` (the budget put on the merged kernels that ``strip()`` ships, then
    ``deploy_epochs`` of fine-tuning with mask and codebook fixed: :func:`deploy_merged`; the
    info's ``deploy`` entry has both forms' ideal bytes before and after).

    Args:
        ratio: target compressed size / dense float32 size (see :func:`budget_for_ratio`), or
            ``None`` for no pruning (then ``budget`` decides).
        bits: bit width of the k-means codebooks, 1..8, or 32 (no quantization).
        eps: Linf PGD radius for training and the default selection test; ``None`` takes
            :func:`~tfsafe.methods.base.default_eps` of the training data.
        epochs: training epochs.
        batch_size: training batch size.
        learning_rate: Adam learning rate.
        steps: PGD steps per training batch (step ``1.25 * eps / steps``).
        adv_weight: weight of CE(PGD) in the loss (0.5 in the paper; 0 = clean training).
        rho: initial ADMM penalty weight.
        rho_growth: factor applied to rho at every ADMM update (>= 1).
        rho_max: cap of rho (``None``: no cap).
        admm_every: batches between ADMM ``Z`` / ``U`` updates.
        ramp_epochs: epochs over which eps grows from 0 (:class:`EpsilonRamp`).
        select_steps: PGD steps of the default validation selection test.
        min_layer_fraction: every layer keeps at least this fraction of its dense matrix size.
        fixed_mask: prune once at the first step and keep that mask (AP / NAP baselines).
        factorized: factorize plain Dense / Conv2D layers first (``False`` prunes plain kernels).
        budget: explicit number of non-zeros; overrides ``ratio`` when given.
        tests: selection tests for the best projected checkpoint, ``[SafetyTest | (test,
            weight), ...]``; ``None`` is PGD accuracy at ``eps`` (ATMC's rule).
        attack: how training examples are crafted: ``"pgd"`` (``steps`` steps, the paper),
            ``"fgsm_rs"`` or ``"free"`` (fast adversarial training, see
            :class:`~tfsafe.safety.adversarial_training.AdversarialModel`); a fast attack is
            watched by a :class:`CatastrophicOverfittingGuard` on 256 validation examples that
            falls back to PGD when the held-out PGD accuracy collapses.
        deploy_epochs: fine-tune epochs of the ``deploy`` stage (0: merge and project only).
        pretrained_robust: the given model is already adversarially trained (the paper starts
            ATMC from such a model): train at the full eps from the first step (no ramp, so
            ``ramp_epochs`` is not used) and spend ``epochs`` on fine-tuning under the budget.
            The given model's PGD accuracy on validation data is recorded
            (``info["input_pgd_accuracy"]``), with a warning when it is below 0.1.

    Raises:
        InputError: a value outside its range (one line naming it).
    """

    name = "atmc"
    stages = ("factorize", "train", "deploy")

    def __init__(self, ratio=0.1, bits=4, eps=None, epochs=8, batch_size=32, learning_rate=1e-3, steps=5,
                 adv_weight=0.5, rho=0.1, rho_growth=1.0, rho_max=None, admm_every=50, ramp_epochs=1.0,
                 select_steps=20, min_layer_fraction=0.01, fixed_mask=False, factorized=True, budget=None,
                 tests=None, attack="pgd", deploy_epochs=1, pretrained_robust=False):
        self.ratio = None if ratio is None else check_number(ratio, "ratio", strict=True)
        if self.ratio is not None and self.ratio > 1:
            raise InputError(f"ratio must be in (0, 1] (compressed size / dense size), got {ratio}.")
        if int(bits) not in (*range(1, 9), 32):
            raise InputError(f"bits must be 1..8 or 32, got {bits!r}.")
        self.bits = int(bits)
        self.eps = None if eps is None else check_number(eps, "eps")
        self.epochs = check_int(epochs, "epochs")
        self.batch_size = check_int(batch_size, "batch_size")
        self.learning_rate = check_number(learning_rate, "learning_rate", strict=True)
        self.steps = check_int(steps, "steps")
        self.adv_weight = check_number(adv_weight, "adv_weight")
        if self.adv_weight > 1:
            raise InputError(f"adv_weight must be in [0, 1], got {adv_weight}.")
        self.rho = check_number(rho, "rho", strict=True)
        self.rho_growth = check_number(rho_growth, "rho_growth", 1.0)
        self.rho_max = None if rho_max is None else check_number(rho_max, "rho_max", strict=True)
        self.admm_every = check_int(admm_every, "admm_every")
        self.ramp_epochs = check_number(ramp_epochs, "ramp_epochs")
        self.select_steps = check_int(select_steps, "select_steps")
        self.min_layer_fraction = check_number(min_layer_fraction, "min_layer_fraction")
        if self.min_layer_fraction > 1:
            raise InputError(f"min_layer_fraction must be in [0, 1], got {min_layer_fraction}.")
        self.fixed_mask = bool(fixed_mask)
        self.factorized = bool(factorized)
        self.budget = None if budget is None else check_budget(budget)
        self.tests = None if tests is None else self._selection_tests(tests)
        if attack not in TRAIN_ATTACKS:
            raise InputError(f"attack must be one of {', '.join(TRAIN_ATTACKS)}, got {attack!r}.")
        self.attack = attack
        self.deploy_epochs = check_int(deploy_epochs, "deploy_epochs", 0)
        self.pretrained_robust = bool(pretrained_robust)

    def _stage_factorize(self, run):
        model = run.models["input"]
        if self.factorized and not matrix_layers(model):
            net = factorize(model, bits=32)
        else:
            net = copy_model(model)
        budget = self.budget
        if budget is None and self.ratio is not None:
            budget = budget_for_ratio(net, self.ratio, self.bits, reference=model)
        run.models["model"] = net
        eps = default_eps(run.train[0]) if self.eps is None else self.eps
        run.state["info"].update(budget=budget, ratio=self.ratio, bits=self.bits, eps=eps)

    def _stage_train(self, run):
        info = run.state["info"]
        net = run.models["model"]
        validation = run.validation if nonempty(run.validation) else None
        ramp = self.ramp_epochs
        if self.pretrained_robust:
            ramp = 0.0
            self._check_robust_input(run, info)
        history, checks, best, guard = _train(
            net, *run.train, validation, info["budget"], self.bits, info["eps"], self.epochs, self.batch_size,
            self.steps, self.learning_rate, self.adv_weight, self.rho, self.rho_growth, self.rho_max,
            self.admm_every, ramp, self.select_steps, self.min_layer_fraction, self.fixed_mask,
            self.tests, run.callbacks, run.verbose, attack=self.attack)
        run.state["history"]["train"] = history
        info["best"] = best
        info["guard"] = guard
        kept = best.get("epoch", self.epochs)
        names = ([t.name for t, _ in self.tests] if self.tests is not None
                 else [f"pgd_linf_{info['eps']:g}"] if info["eps"] > 0 else [])
        weights = [w for _, w in self.tests] if self.tests is not None else [1.0] * len(names)
        run.state["selection"] = {
            "score": "selection_score of the tests on the hard-projected model (validation data)",
            "tests": [{"name": n, "weight": w} for n, w in zip(names, weights)],
            "checks": checks, "kept": f"epoch {kept}", "early": bool(checks) and kept != self.epochs,
        }

    def _check_robust_input(self, run, info):
        x, y = run.validation if nonempty(run.validation) else run.train
        if info["eps"] <= 0 or self.adv_weight == 0:
            return
        accuracy = adversarial_accuracy(run.models["input"], x[:GUARD_EXAMPLES], y[:GUARD_EXAMPLES], info["eps"],
                                        steps=10)
        info["input_pgd_accuracy"] = float(accuracy)
        if accuracy < 0.1:
            warnings.warn(f"pretrained_robust=True but the given model's PGD accuracy at eps {info['eps']:g} is "
                          f"{accuracy:.3f} on {len(x[:GUARD_EXAMPLES])} validation examples: it does not look "
                          "adversarially trained; use pretrained_robust=False (eps ramped up from 0).", stacklevel=3)

    def _stage_deploy(self, run):
        info = run.state["info"]
        net = run.models["model"]
        if not sparse_plus_low_rank_layers(net) or (info["budget"] is None and self.bits == 32):
            info["deploy"] = {"skipped": "no factorized layer or nothing to put on the merged kernels"}
            return
        validation = run.validation if nonempty(run.validation) else None
        deploy = deploy_merged(
            net, *run.train, info["budget"], self.bits, info["eps"], epochs=self.deploy_epochs,
            validation_data=validation, batch_size=self.batch_size, steps=self.steps,
            learning_rate=self.learning_rate, adv_weight=self.adv_weight, attack=self.attack,
            min_layer_fraction=self.min_layer_fraction, select_steps=self.select_steps, tests=self.tests,
            dense=run.models["input"], callbacks=run.callbacks, verbose=run.verbose)
        run.state["history"]["deploy"] = deploy.pop("history")
        info["deploy"] = deploy
        if deploy["checks"]:
            run.state["selection"]["deploy_checks"] = deploy["checks"]


@dataclasses.dataclass
class ATMCResult:
    """What :func:`atmc_train` (and the deprecated :func:`atmc_compress`) returns.

    Attributes:
        model: The compressed (factorized, pruned and quantized) model; ``strip()`` merges it.
        history: Keras ``History.history`` of the training.
        checks: Validation checks of the projected model (``BestProjectedCheckpoint.history``).
        best: The selected check (epoch and validation accuracies).
        deploy: What :func:`deploy_merged` returned (sizes of both forms before and after,
            per-layer non-zeros and codebooks, the fine-tune's history and checks), or ``None``
            when there was nothing to merge.
        guard: The catastrophic-overfitting guard's records of a fast ``attack``, else ``None``.
    """

    model: object
    history: dict
    checks: list
    best: dict
    deploy: dict = None
    guard: dict = None


def atmc_train(model, x, y, budget, bits=8, eps=0.3, epochs=5, validation_data=None, batch_size=128,
                  steps=10, learning_rate=1e-3, adv_weight=0.5, rho=0.1, rho_growth=1.0, rho_max=None,
                  admm_every=50, ramp_epochs=0.0, select_steps=20, min_layer_fraction=0.01, fixed_mask=False,
                  factorized=True, verbose=0, callbacks=None, attack="pgd", deploy_epochs=1, deploy_learning_rate=None):
    """ATMC on arrays (what the paper's baselines share): factorize, PGD-train under ``budget``, project.

    The method's one-call form is ``tfsafe.methods.get("atmc", ...).compress(model, splits)``;
    this lower-level function takes the budget itself and trains in place, so
    :mod:`tfsafe.methods.atmc_baselines` can run NAP / AP / ALR / DA through the same code.

    Args:
        model: A trained classifier (plain Dense/Conv2D layers, or already factorized).
        x, y: Training data (inputs in [0, 1], integer labels).
        budget: Total non-zeros over all factors (see :func:`budget_for_ratio`), or ``None``.
        bits: 1..8 or 32.
        eps, steps: PGD radius and steps for training (step ``1.25 * eps / steps``).
        epochs, batch_size, learning_rate: Training schedule (Adam).
        validation_data: ``(x_val, y_val)`` for choosing the best projected checkpoint by PGD
            accuracy; without it the last projected model is returned.
        adv_weight: Weight of CE(PGD) (0.5 in the paper; 0 = clean training).
        rho, rho_growth, rho_max, admm_every: ADMM penalty and schedule.
        ramp_epochs: Epochs over which eps grows from 0 (needed from scratch at large eps).
        select_steps: PGD steps of the validation selection attack.
        min_layer_fraction, fixed_mask: See :class:`ATMCModel`.
        factorized: Factorize plain Dense/Conv2D layers first (``W = (B + I) A + C``).
        verbose: Keras verbosity.
        callbacks: Extra Keras callbacks.
        attack: ``"pgd"``, ``"fgsm_rs"`` or ``"free"`` (see :class:`ATMC`); a fast attack gets
            the catastrophic-overfitting guard when ``validation_data`` is given.
        deploy_epochs: For ``(B + I) A + C`` models under a budget or below 32 bits, the deploy
            stage (:func:`deploy_merged`) runs after training with this many fine-tune epochs
            (0: merge and project only); ``None`` skips it (the factors are returned as trained).
        deploy_learning_rate: Adam learning rate of the deploy fine-tune (default ``learning_rate``).

    Returns:
        :class:`ATMCResult`. A plain ``model`` is factorized into a new model; a model that is
        already factorized (or ``factorized=False``) is trained in place.
    """
    net = factorize(model, bits=32) if factorized and not matrix_layers(model) else model
    x, y = check_xy(net, x, y, "training")
    if int(epochs) < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}.")
    history, checks, best, guard = _train(net, x, y, validation_data, budget, bits, eps, epochs, batch_size, steps,
                                          learning_rate, adv_weight, rho, rho_growth, rho_max, admm_every,
                                          ramp_epochs, select_steps, min_layer_fraction, fixed_mask, None, callbacks,
                                          verbose, attack=attack)
    deploy = None
    if deploy_epochs is not None and sparse_plus_low_rank_layers(net) and (budget is not None or bits < 32):
        deploy = deploy_merged(net, x, y, budget, bits, eps, epochs=deploy_epochs, validation_data=validation_data,
                               batch_size=batch_size, steps=steps, adv_weight=adv_weight, attack=attack,
                               learning_rate=learning_rate if deploy_learning_rate is None else deploy_learning_rate,
                               min_layer_fraction=min_layer_fraction, select_steps=select_steps,
                               dense=model, callbacks=callbacks,
                               verbose=verbose)
    return ATMCResult(model=net, history=history, checks=checks, best=best, deploy=deploy, guard=guard)


def atmc_compress(*args, **kwargs):
    """Deprecated: use ``tfsafe.methods.get("atmc", ...).compress(model, splits)`` (or :func:`atmc_train`)."""
    warnings.warn("atmc_compress is deprecated; use tfsafe.methods.get('atmc', ...).compress(model, splits).",
                  DeprecationWarning, stacklevel=2)
    return atmc_train(*args, **kwargs)
