"""The unsafe baseline: TF-MOT magnitude pruning with a polynomial schedule, no safety objective."""

import numpy as np

from tfsafe._keras import keras, tfmot
from tfsafe.compress.pruning import is_prunable
from tfsafe.methods.base import CompressionMethod, check_int, check_number
from tfsafe.models import compile_classifier, copy_model, output_kind
from tfsafe.objectives import RelaxLoss
from tfsafe.validation import check_fraction, check_model

__all__ = ["TFMOTPruning"]


class _StopAfter(keras.callbacks.Callback):
    """Stops ``fit`` after ``steps`` batches (early-stopped pruning)."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.seen = steps, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.steps:
            self.model.stop_training = True


class TFMOTPruning(CompressionMethod):
    """TF-MOT ``prune_low_magnitude`` + ``strip_pruning`` (registered as ``baseline``).

    Stages: ``prune`` (fine-tune under ``PolynomialDecay`` from 0 to ``target_sparsity``,
    reached at ``end_fraction`` of the steps, 20 pruning updates) and ``strip``
    (``strip_pruning``: plain layers with the zeros baked in). No selection: the last state is
    returned.

    Args:
        target_sparsity: final fraction of zero weights in the pruned layers, in [0, 1).
        epochs: fine-tuning epochs.
        batch_size: training batch size.
        learning_rate: Adam learning rate.
        end_fraction: share of the training steps after which the target sparsity holds.
        max_steps: ``None`` or stop after this many training steps (batches): early-stopped
            TF-MOT pruning. The schedule then spans ``max_steps`` (the target sparsity holds
            from ``end_fraction`` of them), so the run is comparable with a method that kept
            a state after that many steps (e.g. MIA-SafeCompress's ``selection["kept_step"]``).
        relax_alpha: ``None`` (plain cross-entropy) or the loss level of
            :class:`~tfsafe.objectives.RelaxLoss`: TF-MOT pruning with the membership defence
            and nothing else, which tells the loss's share of a SafeCompress gain from the
            selection's.

    Example:
        >>> TFMOTPruning(target_sparsity=0.8).stages
        ('prune', 'strip')
    """

    name = "baseline"
    stages = ("prune", "strip")
    role = "unsafe baseline"

    def __init__(self, target_sparsity=0.9, epochs=30, batch_size=32, learning_rate=1e-3, end_fraction=0.7,
                 max_steps=None, relax_alpha=None):
        self.target_sparsity = check_fraction(target_sparsity, "target_sparsity", 0.0, 1.0)
        self.epochs = check_int(epochs, "epochs")
        self.batch_size = check_int(batch_size, "batch_size")
        self.learning_rate = check_number(learning_rate, "learning_rate", strict=True)
        self.end_fraction = check_fraction(end_fraction, "end_fraction", 0.0, 1.0, include_high=True)
        self.max_steps = None if max_steps is None else check_int(max_steps, "max_steps")
        self.relax_alpha = None if relax_alpha is None else check_number(relax_alpha, "relax_alpha", strict=True)

    def _stage_prune(self, run):
        x, y = run.train
        steps_per_epoch = int(np.ceil(len(x) / self.batch_size))
        steps = self.epochs * steps_per_epoch
        stop = []
        if self.max_steps is not None and self.max_steps < steps:
            steps = self.max_steps
            stop = [_StopAfter(steps)]
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=self.target_sparsity, begin_step=0,
            end_step=max(1, int(steps * self.end_fraction)), frequency=max(1, steps // 20))
        pruned = _prune_supported_layers(run.models["input"], schedule)
        if self.relax_alpha is None:
            compile_classifier(pruned, self.learning_rate)
        else:
            pruned.compile(optimizer=keras.optimizers.Adam(self.learning_rate), metrics=["accuracy"],
                           loss=RelaxLoss(self.relax_alpha, from_logits=output_kind(pruned) == "logits"))
        history = pruned.fit(
            x, y, epochs=min(self.epochs, -(-steps // steps_per_epoch)), batch_size=self.batch_size,
            verbose=run.verbose, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *stop, *run.callbacks])
        run.models["model"] = pruned
        run.state["history"]["prune"] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        run.state["info"]["steps"] = int(pruned.optimizer.iterations.numpy())

    def _stage_strip(self, run):
        run.models["model"] = tfmot.sparsity.keras.strip_pruning(run.models["model"])
        run.state["info"]["target_sparsity"] = self.target_sparsity
        run.state["selection"] = {"score": None, "tests": [], "checks": [], "kept": "final", "early": False}


def _prune_supported_layers(model, schedule):
    """``prune_low_magnitude`` on every layer TF-MOT can prune, the others kept as they are.

    TF-MOT's whole-model call refuses a model with any layer outside its registry (a Keras 3
    ``Rescaling``, say); wrapping layer by layer through ``clone_model`` is TF-MOT's own
    documented way to prune part of a model. Nested backbones are inlined first so their layers
    are reached too.
    """
    flat = check_model(copy_model(model))

    def wrap(layer):
        if is_prunable(layer):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(flat, clone_function=wrap)
