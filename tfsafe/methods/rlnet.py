"""RLNet: fewer ReLUs for private inference, robust to adversarial and natural perturbations.

Three stages (arXiv 2402.05521), all ``Model.fit`` with the objective in a ``train_step``:

1. :func:`train_robust_teacher`: augmentation + PGD adversarial training with dual batch norm
   (clean batches through the clean BN path, PGD batches through the adversarial path).
2. :func:`search_robust_mask`: SNL mask search on the teacher under a ReLU budget (L1 on the
   mask, penalty grown 1.1x when the ReLU count stalls), with the same robust loss; then the
   mask is binarized to exactly the budget (globally or per layer by sensitivity) and frozen.
3. :func:`finetune_student`: the masked student is fine-tuned with the mask frozen on
   ``0.5 CE + 0.5 KD_T(student, teacher) + 1000 * AT(post-ReLU maps)`` for both paths.

:func:`rlnet` runs all three. With ``adversarial=False, augment=False`` the same code is the
non-robust SNL baseline (search + KD fine-tuning without adversarial examples).

The deployed model uses one BN path, ``inference_path`` ("clean" by default); ``strip()``
keeps that path only. Evaluate the path you deploy.
"""

import dataclasses
import warnings

import numpy as np

from tfsafe._keras import keras
from tfsafe.compress.dual_bn import DualBatchNormalization, dual_batchnorm, dual_bn_layers, set_bn_route
from tfsafe.compress.linearization import (
    binarize_masks,
    check_relu_budget,
    linearize,
    mask_layers,
    mask_relu_count,
)
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.methods.base import CompressionMethod, check_choice, check_int, check_number, default_eps, nonempty
from tfsafe.methods.relu_mask_search import search_relu_mask
from tfsafe.methods.rlnet_training import (
    RLNetTrainer,
    RobustLoss,
    RobustLossGuard,
    augment_images,
    fit_robust,
    relu_activations_model,
)
from tfsafe.models import copy_model
from tfsafe.safety.adversarial_training import TRAIN_ATTACKS
from tfsafe.validation import check_model, check_xy

__all__ = [
    "RLNet", "rlnet_cnn", "augment_images", "relu_activations_model", "RobustLoss", "RLNetTrainer", "RobustLossGuard",
    "train_robust_teacher", "search_robust_mask", "finetune_student", "rlnet", "RLNetResult",
]


def rlnet_cnn(input_shape=(8, 8, 1), num_classes=10, filters=(16, 32), dense=64, dual_bn=True,
              inference_path="clean", bn_momentum=0.9, name="rlnet_cnn"):
    """A small conv net with (dual) batch norm before every ReLU: Conv-BN-ReLU(-Pool) blocks,
    then Dense-BN-ReLU and a logits layer. ``bn_momentum`` 0.9 (not Keras' 0.99) lets the
    moving statistics settle within the few hundred steps small data sets give.

    Example:
        >>> model = rlnet_cnn((28, 28, 1), 10)
        >>> len(dual_bn_layers(model))
        3
    """
    def norm(layer_name):
        if dual_bn:
            return DualBatchNormalization(momentum=bn_momentum, inference_path=inference_path, name=layer_name)
        return keras.layers.BatchNormalization(momentum=bn_momentum, name=layer_name)

    inputs = keras.Input(input_shape)
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = norm(f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense, use_bias=False, name="fc1")(x)
    x = norm(f"bn{len(filters) + 1}")(x)
    x = keras.layers.ReLU(name=f"relu{len(filters) + 1}")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def train_robust_teacher(model, x, y, eps=0.3, epochs=5, batch_size=64, learning_rate=1e-3, pgd_steps=7,
                         augment=True, adv_weight=0.5, ramp_epochs=1.0, inference_path="clean",
                         validation_data=None, callbacks=None, verbose=0, attack="pgd", return_history=False):
    """Stage 1: augmentation + PGD adversarial training with dual batch norm.

    Args:
        model: An all-ReLU classifier with BatchNormalization (made dual, both paths starting
            from its weights) or DualBatchNormalization layers. It is copied, not modified, so a
            trained standard model is a good starting point.
        x, y: Training data (images in [0, 1], integer labels).
        eps, pgd_steps: PGD radius and steps used while training.
        ramp_epochs: Epochs over which eps grows from 0 to ``eps``.
        inference_path: The BN path the teacher deploys when new dual BN layers are made.
        attack: ``"pgd"``, ``"fgsm_rs"`` or ``"free"`` (see :class:`RobustLoss`); a fast attack
            is watched by a :class:`RobustLossGuard` on ``validation_data`` when given.
        return_history: Also return the Keras ``History`` (``history.guard``: the guard's records).

    Returns:
        The robust teacher (a new model with dual batch norm), or ``(teacher, history)``.

    Example:
        >>> from tfsafe.data import load_digits
        >>> (x, y), _ = load_digits()
        >>> teacher = train_robust_teacher(rlnet_cnn(), x[:256], y[:256], eps=0.1, epochs=1, pgd_steps=2)
    """
    model = check_model(model)
    x, y = check_xy(model, x, y)
    teacher = copy_model(model) if dual_bn_layers(model) else dual_batchnorm(model, inference_path=inference_path)
    loss_fn = RobustLoss(eps, pgd_steps, adv_weight=adv_weight, augment=augment, attack=attack)
    history = fit_robust(teacher, loss_fn, x, y, epochs, batch_size, learning_rate, validation_data, callbacks,
                         verbose, ramp_epochs)
    return (teacher, history) if return_history else teacher


def search_robust_mask(teacher, x, y, relu_budget, eps=0.3, epochs=10, batch_size=64, learning_rate=5e-4,
                       pgd_steps=7, penalty=1e-3, mask_learning_rate=1.0, check_every=5, linear="identity",
                       allocation="global", adversarial=True, augment=True, use_teacher=True, verbose=0,
                       attack="pgd"):
    """Stage 2: linearize a copy of ``teacher`` and search its ReLU mask down to ``relu_budget``.

    The relaxed model starts as an exact copy of the teacher (all masks on) and trains on the
    robust loss (with KD from the teacher when ``use_teacher``) plus the L1 mask penalty until
    at most ``relu_budget`` units remain on; the mask is then binarized to exactly the budget.
    ``attack="free"`` crafts FGSM-RS examples here (the search's own trainer does not replay
    minibatches).

    Returns:
        ``(student, schedule)``: the frozen-mask student and the search
        :class:`~tfsafe.compress.linearization.ReLUBudgetSchedule` (``.reached``, ``.history``).
    """
    teacher = check_model(teacher)
    x, y = check_xy(teacher, x, y)
    masked = linearize(teacher, linear=linear)
    check_relu_budget(relu_budget, mask_relu_count(masked))
    loss_fn = RobustLoss(eps, pgd_steps, teacher=teacher if use_teacher else None, at_weight=0.0,
                         adversarial=adversarial, augment=augment, attack="fgsm_rs" if attack == "free" else attack)
    schedule = search_relu_mask(masked, x, y, relu_budget, epochs=epochs, batch_size=batch_size,
                                learning_rate=learning_rate, penalty=penalty, mask_learning_rate=mask_learning_rate,
                                check_every=check_every, task_loss=loss_fn, verbose=verbose)
    set_bn_route(masked, "inference")
    student = binarize_masks(masked, relu_budget, allocation=allocation, x=x, y=y)
    return student, schedule


def finetune_student(student, teacher, x, y, eps=0.3, epochs=5, batch_size=64, learning_rate=5e-4, pgd_steps=7,
                     temperature=4.0, kd_weight=0.5, at_weight=1000.0, adversarial=True, augment=True,
                     validation_data=None, callbacks=None, verbose=0, attack="pgd"):
    """Stage 3: fine-tune the frozen-mask ``student`` (in place) on CE + KD + post-ReLU AT.

    Returns:
        The Keras ``History`` of the fit.
    """
    if not mask_layers(student):
        raise UnsupportedModelError("The student has no PolyReLUMask layers; make it with search_robust_mask().")
    if any(not m.frozen for m in mask_layers(student)):
        raise UnsupportedModelError("The student's masks are relaxed; binarize them with binarize_masks() first.")
    x, y = check_xy(student, x, y)
    loss_fn = RobustLoss(eps, pgd_steps, teacher=teacher, temperature=temperature, kd_weight=kd_weight,
                         at_weight=at_weight, adversarial=adversarial, augment=augment, attack=attack)
    return fit_robust(student, loss_fn, x, y, epochs, batch_size, learning_rate, validation_data, callbacks, verbose)


@dataclasses.dataclass
class RLNetResult:
    """What :func:`rlnet` returns."""

    student: object
    teacher: object
    relu_budget: int
    relu_count: int
    all_relu_count: int
    search_reached: bool
    search_history: list

    @property
    def relu_reduction(self):
        """How many times fewer ReLUs the student computes than the all-ReLU teacher."""
        return self.all_relu_count / max(self.relu_count, 1)

    def to_dict(self):
        return {"relu_budget": self.relu_budget, "relu_count": self.relu_count,
                "all_relu_count": self.all_relu_count, "relu_reduction": self.relu_reduction,
                "search_reached": self.search_reached, "search_history": self.search_history}


def rlnet(model, x, y, relu_budget, eps=0.3, teacher=None, teacher_epochs=5, search_epochs=10, finetune_epochs=5,
          batch_size=64, pgd_steps=7, linear="identity", allocation="global", inference_path="clean",
          validation_data=None, verbose=0, **search_options):
    """Deprecated (use :class:`RLNet`): robust teacher -> ReLU mask under a budget -> distilled student.

    Args:
        model: An all-ReLU classifier with BatchNormalization (or DualBatchNormalization).
        x, y: Training data (images in [0, 1], integer labels).
        relu_budget: ReLU units the student keeps (an int in 1..ReLU count of the model).
        eps: Linf PGD radius for training.
        teacher: A robust teacher already trained by :func:`train_robust_teacher` (skips stage 1).
        linear: What masked units compute: ``"identity"`` or ``"poly"``.
        allocation: ``"global"`` or ``"sensitivity"`` (per-layer budgets).
        **search_options: More :func:`search_robust_mask` options (``penalty``,
            ``mask_learning_rate``, ``check_every``, ``learning_rate``).

    Returns:
        :class:`RLNetResult` with the student (frozen masks, dual BN) and the teacher.

    Example:
        >>> from tfsafe.data import load_digits
        >>> (x, y), _ = load_digits()
        >>> result = rlnet(rlnet_cnn(), x[:256], y[:256], relu_budget=100, eps=0.1, teacher_epochs=1,
        ...                search_epochs=1, finetune_epochs=1, pgd_steps=2)
        >>> result.relu_count
        100
    """
    warnings.warn("rlnet() is deprecated; use tfsafe.methods.get('rlnet', ...).compress(model, splits).",
                  DeprecationWarning, stacklevel=2)
    model = check_model(model)
    x, y = check_xy(model, x, y)
    all_relu = mask_relu_count(linearize(model))
    budget = check_relu_budget(relu_budget, all_relu)
    if teacher is None:
        teacher = train_robust_teacher(model, x, y, eps=eps, epochs=teacher_epochs, batch_size=batch_size,
                                       pgd_steps=pgd_steps, inference_path=inference_path,
                                       validation_data=validation_data, verbose=verbose)
    elif not dual_bn_layers(teacher):
        raise UnsupportedModelError("The teacher has no DualBatchNormalization; train it with train_robust_teacher().")
    student, schedule = search_robust_mask(teacher, x, y, budget, eps=eps, epochs=search_epochs,
                                           batch_size=batch_size, pgd_steps=pgd_steps, linear=linear,
                                           allocation=allocation, verbose=verbose, **search_options)
    finetune_student(student, teacher, x, y, eps=eps, epochs=finetune_epochs, batch_size=batch_size,
                     pgd_steps=pgd_steps, validation_data=validation_data, verbose=verbose)
    return RLNetResult(student=student, teacher=teacher, relu_budget=budget, relu_count=mask_relu_count(student),
                       all_relu_count=all_relu, search_reached=bool(schedule.reached),
                       search_history=list(schedule.history))



class RLNet(CompressionMethod):
    """RLNet as a compression method: robust teacher, robust ReLU-mask search, distilled student.

    Stages: ``teacher`` (:func:`train_robust_teacher`), ``search`` (:func:`search_robust_mask`
    down to the ReLU budget, then binarized) and ``finetune`` (:func:`finetune_student`). The
    model needs BatchNormalization before its ReLUs (e.g. :func:`rlnet_cnn`). RLNet does no
    model selection: the fine-tuned student is returned (``selection.kept == "final"``).

    Args:
        relu_fraction: share of the model's ReLU units the student keeps, in (0, 1].
        eps: Linf PGD radius for training; ``None`` takes
            :func:`~tfsafe.methods.base.default_eps` of the training data.
        teacher_epochs: epochs of robust teacher training.
        search_epochs: epochs of the mask search.
        finetune_epochs: epochs of student fine-tuning.
        batch_size: training batch size (every stage).
        pgd_steps: PGD steps while training (step ``2.5 * eps / steps``).
        linear: what masked units compute, ``"identity"`` or ``"poly"``.
        allocation: ``"global"`` ranking or per-layer ``"sensitivity"`` budgets.
        penalty: initial L1 weight on the masks (grown 1.1x when the ReLU count stalls).
        mask_learning_rate: SGD learning rate of the masks.
        check_every: batches between ReLU-count checks of the budget schedule.
        learning_rate: Adam learning rate of the weights during search and fine-tuning.
        teacher_learning_rate: Adam learning rate of teacher training.
        ramp_epochs: epochs over which the teacher's eps grows from 0.
        adversarial: ``False`` trains without PGD (with ``augment=False``: the SNL baseline).
        augment: light augmentations of the clean inputs (images only: other data gets an
            InputError asking for ``augment=False``).
        inference_path: BN path the model deploys, ``"clean"`` or ``"adversarial"``.
        relu_budget: explicit number of ReLUs to keep; overrides ``relu_fraction``.
        attack: how the adversarial path's training inputs are crafted in every stage: ``"pgd"``
            (``pgd_steps`` steps), or fast adversarial training, ``"fgsm_rs"`` (FGSM from a random
            start) or ``"free"`` (minibatch replays; the mask search uses FGSM-RS), with a
            :class:`RobustLossGuard` on 256 validation examples that falls back to PGD when the
            held-out PGD accuracy collapses (its records: ``info["guard"]``).

    Raises:
        InputError: a value outside its range (one line naming it).
    """

    name = "rlnet"
    stages = ("teacher", "search", "finetune")

    def __init__(self, relu_fraction=0.1, eps=None, teacher_epochs=8, search_epochs=15, finetune_epochs=8,
                 batch_size=32, pgd_steps=5, linear="identity", allocation="global", penalty=1e-3,
                 mask_learning_rate=1.0, check_every=5, learning_rate=5e-4, teacher_learning_rate=1e-3,
                 ramp_epochs=1.0, adversarial=True, augment=True, inference_path="clean", relu_budget=None,
                 attack="pgd"):
        self.relu_fraction = check_number(relu_fraction, "relu_fraction", strict=True)
        if self.relu_fraction > 1:
            raise InputError(f"relu_fraction must be in (0, 1], got {relu_fraction}.")
        self.eps = None if eps is None else check_number(eps, "eps")
        self.teacher_epochs = check_int(teacher_epochs, "teacher_epochs", 0)
        self.search_epochs = check_int(search_epochs, "search_epochs")
        self.finetune_epochs = check_int(finetune_epochs, "finetune_epochs", 0)
        self.batch_size = check_int(batch_size, "batch_size")
        self.pgd_steps = check_int(pgd_steps, "pgd_steps")
        self.linear = check_choice(linear, "linear", ("identity", "poly"))
        self.allocation = check_choice(allocation, "allocation", ("global", "sensitivity"))
        self.penalty = check_number(penalty, "penalty")
        self.mask_learning_rate = check_number(mask_learning_rate, "mask_learning_rate", strict=True)
        self.check_every = check_int(check_every, "check_every")
        self.learning_rate = check_number(learning_rate, "learning_rate", strict=True)
        self.teacher_learning_rate = check_number(teacher_learning_rate, "teacher_learning_rate", strict=True)
        self.ramp_epochs = check_number(ramp_epochs, "ramp_epochs")
        self.adversarial = bool(adversarial)
        self.augment = bool(augment)
        self.inference_path = check_choice(inference_path, "inference_path", ("clean", "adversarial"))
        self.relu_budget = None if relu_budget is None else check_int(relu_budget, "relu_budget")
        self.attack = check_choice(attack, "attack", TRAIN_ATTACKS)

    def _eps(self, run):
        return default_eps(run.train[0]) if self.eps is None else self.eps

    def _validation(self, run):
        return run.validation if nonempty(run.validation) else None

    def _stage_teacher(self, run):
        model = run.models["input"]
        if self.augment and np.ndim(run.train[0]) != 4:
            raise InputError(f"rlnet: augment=True shifts and recolours images of shape (batch, height, width, "
                             f"channels); this data has shape {np.shape(run.train[0])}. Pass augment=False for "
                             "tabular, text or sequence data.")
        all_relu = mask_relu_count(linearize(model))
        budget = self.relu_budget if self.relu_budget is not None else max(1, round(self.relu_fraction * all_relu))
        run.state["info"].update(relu_budget=check_relu_budget(budget, all_relu), all_relu_count=all_relu,
                                 eps=self._eps(run))
        if self.teacher_epochs == 0 and dual_bn_layers(model):
            run.models["teacher"] = copy_model(model)
            return
        if not self.adversarial:  # the SNL baseline: a standard (non-robust) teacher
            teacher = (copy_model(model) if dual_bn_layers(model)
                       else dual_batchnorm(model, inference_path=self.inference_path))
            fit_robust(teacher, RobustLoss(adversarial=False, augment=self.augment), *run.train,
                       max(1, self.teacher_epochs), self.batch_size, self.teacher_learning_rate,
                       self._validation(run), run.callbacks, run.verbose)
            run.models["teacher"] = teacher
            return
        run.models["teacher"], history = train_robust_teacher(
            model, *run.train, eps=self._eps(run), epochs=max(1, self.teacher_epochs), batch_size=self.batch_size,
            learning_rate=self.teacher_learning_rate, pgd_steps=self.pgd_steps, augment=self.augment,
            ramp_epochs=self.ramp_epochs, inference_path=self.inference_path,
            validation_data=self._validation(run), callbacks=run.callbacks, verbose=run.verbose, attack=self.attack,
            return_history=True)
        if history.guard is not None:
            run.state["info"].setdefault("guard", {})["teacher"] = history.guard

    def _stage_search(self, run):
        info = run.state["info"]
        student, schedule = search_robust_mask(
            run.models["teacher"], *run.train, info["relu_budget"], eps=info["eps"], epochs=self.search_epochs,
            batch_size=self.batch_size, learning_rate=self.learning_rate, pgd_steps=self.pgd_steps,
            penalty=self.penalty, mask_learning_rate=self.mask_learning_rate, check_every=self.check_every,
            linear=self.linear, allocation=self.allocation, adversarial=self.adversarial, augment=self.augment,
            verbose=run.verbose, attack=self.attack)
        run.models["model"] = student
        info["search_reached"] = bool(schedule.reached)
        run.state["history"]["search"] = list(schedule.history)

    def _stage_finetune(self, run):
        info = run.state["info"]
        student = run.models["model"]
        if self.finetune_epochs:
            history = finetune_student(
                student, run.models["teacher"], *run.train, eps=info["eps"], epochs=self.finetune_epochs,
                batch_size=self.batch_size, learning_rate=self.learning_rate, pgd_steps=self.pgd_steps,
                adversarial=self.adversarial, augment=self.augment, validation_data=self._validation(run),
                callbacks=run.callbacks, verbose=run.verbose, attack=self.attack)
            run.state["history"]["finetune"] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
            if history.guard is not None:
                info.setdefault("guard", {})["finetune"] = history.guard
        info.update(relu_count=int(mask_relu_count(student)))
        info["relu_reduction"] = info["all_relu_count"] / max(info["relu_count"], 1)
        run.state["selection"] = {"score": None, "tests": [], "checks": [], "kept": "final", "early": False}

    def _result(self, run):
        return run.models["model"], {}, {"teacher": run.models["teacher"]}
