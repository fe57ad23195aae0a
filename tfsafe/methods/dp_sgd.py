"""DP-SGD as a baseline method: train with tensorflow-privacy's DP Keras optimizers, optionally prune.

Differentially private SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016)
clips every example's gradient to ``l2_norm_clip`` and adds Gaussian noise of standard
deviation ``noise_multiplier * l2_norm_clip`` to each batch's summed gradient. The run's
``(epsilon, delta)`` comes from the RDP accountant of ``dp-accounting`` (what
tensorflow-privacy's ``compute_dp_sgd_privacy_statement`` uses): ``steps`` compositions of a
Poisson-subsampled Gaussian mechanism with sampling rate ``batch_size / N``. Like
tensorflow-privacy's statement, this treats Keras's shuffled batches as Poisson samples (the
usual approximation; ``info["privacy"]["epsilon_once_per_epoch"]`` is the conservative bound
for an arbitrary data order, each example once per epoch, which the statement also prints) and
halves the effective noise when microbatches hold more than one example (their sensitivity
doubles, "How to DP-fy ML", Ponomareva et al. 2023, Sec. 5.6).

With ``target_sparsity`` the DP model is then pruned with TF-MOT (``prune_low_magnitude``,
polynomial schedule) while fine-tuning with the same DP optimizer ("DP + prune"); the epsilon
covers the training and the pruning steps together.

Example:
    >>> DPSGD(noise_multiplier=1.1).stages
    ('train', 'prune')
    >>> round(dp_sgd_epsilon(60000, 256, 1.1, 60 * 234, 1e-5), 2)  # MNIST's classic setting
    2.59
"""

import math
import sys

import dp_accounting

from tfsafe._keras import keras, tf, tfmot
from tfsafe.errors import InputError
from tfsafe.methods.base import CompressionMethod, check_choice, check_int, check_number
from tfsafe.models import compile_classifier, copy_model, output_kind
from tfsafe.validation import check_fraction

# tensorflow-privacy's own switch: skip its estimator imports, which fail on TF >= 2.16.
sys.skip_tf_privacy_import = True
from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras  # noqa: E402

__all__ = ["DPSGD", "dp_sgd_epsilon", "dp_sgd_epsilon_once_per_epoch", "ACCOUNTANT"]

ACCOUNTANT = "RDP (dp_accounting.rdp.RdpAccountant), Poisson-subsampled Gaussian, add/remove-one-example"
_OPTIMIZERS = {"adam": dp_optimizer_keras.DPKerasAdamOptimizer, "sgd": dp_optimizer_keras.DPKerasSGDOptimizer}
_OPTIMIZER_NAMES = {"adam": "DPKerasAdamOptimizer", "sgd": "DPKerasSGDOptimizer"}


def dp_sgd_epsilon(num_examples, batch_size, noise_multiplier, steps, delta, microbatched=False):
    """Epsilon of ``steps`` DP-SGD steps at ``delta``, from the RDP accountant.

    Args:
        num_examples: N, the number of training examples.
        batch_size: examples per step (sampling rate ``batch_size / N``).
        noise_multiplier: noise standard deviation over the clipping norm.
        steps: optimizer steps taken with this noise and batch size.
        delta: the target delta, in (0, 1).
        microbatched: True when microbatches hold more than one example (the noise relative
            to the sensitivity is then halved).

    Returns:
        Epsilon as a float; ``inf`` without noise.
    """
    if noise_multiplier <= 0:
        return math.inf
    noise = noise_multiplier / 2 if microbatched else noise_multiplier
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(min(1.0, batch_size / num_examples), dp_accounting.GaussianDpEvent(noise)),
        int(steps))
    return float(dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta))


def dp_sgd_epsilon_once_per_epoch(epochs, noise_multiplier, delta, microbatched=False):
    """Epsilon without subsampling amplification: each example in exactly one step per epoch.

    The bound that holds for any data order (tensorflow-privacy's statement prints it beside
    the Poisson one): ``ceil(epochs)`` Gaussian mechanisms composed. ``inf`` without noise.
    """
    if noise_multiplier <= 0:
        return math.inf
    noise = noise_multiplier / 2 if microbatched else noise_multiplier
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise), int(math.ceil(epochs)))
    return float(dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta))


class DPSGD(CompressionMethod):
    """DP-SGD training (registered as ``dp_sgd``), then optional TF-MOT pruning with the DP optimizer.

    Stages: ``train`` (DP-SGD from a re-initialised copy of the model's architecture, or
    fine-tuning of its weights with ``from_scratch=False``) and ``prune`` (with
    ``target_sparsity``: ``prune_low_magnitude`` fine-tuning with the DP optimizer, then
    ``strip_pruning``; otherwise nothing). Every step draws a full batch (the last partial
    batch of each epoch is dropped, as the microbatch split needs). No selection: the last
    state is returned (choosing among states by validation would cost privacy too).

    The result's ``info`` holds ``epsilon`` (``None`` without noise), ``delta``, ``steps``,
    ``target_sparsity`` and ``privacy``: ``noise_multiplier``, ``l2_norm_clip``,
    ``sampling_rate``, ``num_examples``, ``train_steps``, ``prune_steps``, ``microbatched``,
    ``optimizer``, ``epsilon_once_per_epoch``, ``accountant`` and ``guarantee`` (what epsilon
    covers: with ``from_scratch=False`` only the fine-tuning, not the given weights).

    Args:
        noise_multiplier: Gaussian noise std over ``l2_norm_clip``, >= 0 (0: no privacy).
        l2_norm_clip: per-example (per-microbatch) gradient clipping norm, > 0.
        num_microbatches: microbatches per batch; ``None`` clips every example on its own.
            ``batch_size`` must be divisible by it.
        learning_rate: the DP optimizer's learning rate.
        epochs: DP training epochs.
        batch_size: examples per step.
        optimizer: ``"adam"`` (DPKerasAdamOptimizer) or ``"sgd"`` (DPKerasSGDOptimizer).
        from_scratch: train the model's architecture from a fresh initialisation (True) or
            fine-tune the given weights (False: epsilon covers only the fine-tuning).
        delta: the reported epsilon's delta; ``None``: ``min(1e-5, 1 / N)``.
        target_sparsity: ``None`` (no pruning) or the fraction of zero weights in [0, 1) that
            "DP + prune" reaches.
        prune_epochs: DP fine-tuning epochs of the pruning stage.
        end_fraction: share of the pruning steps after which the target sparsity holds.

    Raises:
        InputError: a bad value (one line naming it).
    """

    name = "dp_sgd"
    stages = ("train", "prune")

    def __init__(self, noise_multiplier=1.1, l2_norm_clip=1.0, num_microbatches=None, learning_rate=1e-3, epochs=20,
                 batch_size=64, optimizer="adam", from_scratch=True, delta=None, target_sparsity=None,
                 prune_epochs=5, end_fraction=0.7):
        self.noise_multiplier = check_number(noise_multiplier, "noise_multiplier")
        self.l2_norm_clip = check_number(l2_norm_clip, "l2_norm_clip", strict=True)
        self.batch_size = check_int(batch_size, "batch_size")
        self.num_microbatches = None if num_microbatches is None else check_int(num_microbatches, "num_microbatches")
        if self.num_microbatches is not None and self.batch_size % self.num_microbatches:
            raise InputError(f"batch_size ({self.batch_size}) must be divisible by num_microbatches "
                             f"({self.num_microbatches}); pick a divisor or num_microbatches=None.")
        self.learning_rate = check_number(learning_rate, "learning_rate", strict=True)
        self.epochs = check_int(epochs, "epochs")
        self.optimizer = check_choice(optimizer, "optimizer", tuple(_OPTIMIZERS))
        if not isinstance(from_scratch, bool):
            raise InputError(f"from_scratch must be true or false, got {from_scratch!r}.")
        self.from_scratch = from_scratch
        self.delta = None if delta is None else check_fraction(delta, "delta", 0.0, 1.0)
        if self.delta == 0.0:
            raise InputError("delta must be > 0 (epsilon is unbounded at delta = 0); try 1e-5.")
        self.target_sparsity = (None if target_sparsity is None
                                else check_fraction(target_sparsity, "target_sparsity", 0.0, 1.0))
        self.prune_epochs = check_int(prune_epochs, "prune_epochs")
        self.end_fraction = check_fraction(end_fraction, "end_fraction", 0.0, 1.0, include_high=True)

    @property
    def microbatched(self):
        """Whether microbatches hold more than one example (sensitivity doubles)."""
        return self.num_microbatches is not None and self.num_microbatches < self.batch_size

    # -- pieces ------------------------------------------------------------------------------

    def _steps_per_epoch(self, run):
        n = len(run.train[0])
        if n < self.batch_size:
            raise InputError(f"dp_sgd: the training split has {n} examples, fewer than batch_size={self.batch_size}; "
                             "lower batch_size.")
        return n // self.batch_size

    def _compile(self, model):
        dp_optimizer = _OPTIMIZERS[self.optimizer](
            l2_norm_clip=self.l2_norm_clip, noise_multiplier=self.noise_multiplier,
            num_microbatches=self.num_microbatches, learning_rate=self.learning_rate)
        # tensorflow-privacy needs the per-example (vector) loss to clip per microbatch.
        from_logits = output_kind(model) == "logits"
        if model.outputs[0].shape[-1] == 1:  # a one-unit binary head on 0/1 labels
            loss = keras.losses.BinaryCrossentropy(from_logits=from_logits, reduction=keras.losses.Reduction.NONE)
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits,
                                                              reduction=keras.losses.Reduction.NONE)
        model.compile(optimizer=dp_optimizer, loss=loss, metrics=["accuracy"])
        return model

    def _dataset(self, run, seed):
        x, y = run.train
        data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return data.batch(self.batch_size, drop_remainder=True)

    def _fit(self, run, model, epochs, callbacks=()):
        validation = run.validation if len(run.validation[0]) else None
        history = model.fit(self._dataset(run, run.seed), epochs=epochs, validation_data=validation,
                            verbose=run.verbose, callbacks=[*callbacks, *run.callbacks])
        return {k: [float(v) for v in vals] for k, vals in history.history.items()}

    def _account(self, run):
        info = run.state["info"]
        privacy = info.setdefault("privacy", {})
        n = len(run.train[0])
        delta = self.delta if self.delta is not None else min(1e-5, 1.0 / n)
        steps = privacy.get("train_steps", 0) + privacy.get("prune_steps", 0)
        epsilon = dp_sgd_epsilon(n, self.batch_size, self.noise_multiplier, steps, delta, self.microbatched)
        once = dp_sgd_epsilon_once_per_epoch(steps / (n // self.batch_size), self.noise_multiplier, delta,
                                             self.microbatched)
        info.update(epsilon=None if math.isinf(epsilon) else epsilon, delta=delta, steps=steps)
        privacy.update(
            epsilon_once_per_epoch=None if math.isinf(once) else once, noise_multiplier=self.noise_multiplier,
            l2_norm_clip=self.l2_norm_clip, sampling_rate=self.batch_size / n, num_examples=n,
            microbatched=self.microbatched, accountant=ACCOUNTANT,
            guarantee=("no noise: no differential-privacy guarantee" if math.isinf(epsilon) else
                       "example-level (epsilon, delta)-DP of all DP steps from a fresh initialisation"
                       if self.from_scratch else
                       "covers only the DP fine-tuning: the given model's weights were trained without DP"))

    # -- stages --------------------------------------------------------------------------------

    def _stage_train(self, run):
        steps_per_epoch = self._steps_per_epoch(run)
        source = run.models["input"]
        # clone_model re-runs the initialisers (seeded by the stage's seed): a fresh model.
        model = keras.models.clone_model(source) if self.from_scratch else copy_model(source)
        run.state["history"]["train"] = self._fit(run, self._compile(model), self.epochs)
        run.state["info"].setdefault("privacy", {}).update(
            train_steps=self.epochs * steps_per_epoch, from_scratch=self.from_scratch,
            optimizer=_OPTIMIZER_NAMES[self.optimizer])
        self._account(run)
        # Checkpointed without the DP optimizer (its state is not needed to go on).
        run.models["model"] = compile_classifier(copy_model(model), self.learning_rate)

    def _stage_prune(self, run):
        run.state["selection"] = {"score": None, "tests": [], "checks": [], "kept": "final", "early": False}
        if self.target_sparsity is None:
            run.state["info"]["target_sparsity"] = None
            run.state["info"]["privacy"]["prune_steps"] = 0
            return
        steps = self.prune_epochs * self._steps_per_epoch(run)
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=self.target_sparsity, begin_step=0,
            end_step=max(1, int(steps * self.end_fraction)), frequency=max(1, steps // 20))
        pruned = tfmot.sparsity.keras.prune_low_magnitude(copy_model(run.models["model"]), pruning_schedule=schedule)
        run.state["history"]["prune"] = self._fit(run, self._compile(pruned), self.prune_epochs,
                                                  callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        run.state["info"]["target_sparsity"] = self.target_sparsity
        run.state["info"]["privacy"]["prune_steps"] = steps
        self._account(run)
        run.models["model"] = compile_classifier(tfmot.sparsity.keras.strip_pruning(pruned), self.learning_rate)

    def _result(self, run):
        return run.models["model"], {}, {}

