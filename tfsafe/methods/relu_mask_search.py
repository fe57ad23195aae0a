"""The SNL-style ReLU mask search: train relaxed :class:`PolyReLUMask` values under an L1 budget.

:class:`ReLUMaskSearch` trains the masks of a model made by
:func:`tfsafe.compress.linearization.linearize` on ``task_loss + penalty * sum(alpha)``;
:class:`ReLUBudgetSchedule` grows the penalty 1.1x whenever the ReLU count stalls, until the
count reaches the budget (Cho et al., "Selective Network Linearization for Efficient Private
Inference", ICML 2022). :func:`search_relu_mask` runs both;
:func:`tfsafe.compress.linearization.binarize_masks` then keeps exactly the budget. RLNet
(:mod:`tfsafe.methods.rlnet`) uses it with its robust loss; pass ``search=search_relu_mask`` to
``linearize`` to use it there.
"""

from tfsafe._keras import keras, tf
from tfsafe.compress.linearization import check_relu_budget, mask_layers
from tfsafe.errors import UnsupportedModelError
from tfsafe.models import logits_model
from tfsafe.objectives import softmax_cross_entropy
from tfsafe.validation import check_xy

__all__ = ["ReLUMaskSearch", "ReLUBudgetSchedule", "search_relu_mask"]


class ReLUMaskSearch(keras.Model):
    """Trains a masked model on ``task_loss + penalty * sum(alpha)`` (the SNL relaxation).

    The weights use the optimizer given to ``compile``; the mask values use their own
    ``mask_optimizer``: SGD with momentum, not Adam, because Adam's per-parameter normalization
    would move every penalized ``alpha`` at the same speed whatever its effect on the loss, so
    the final ranking of units would be noise. With SGD a unit's ``alpha`` falls by
    ``lr * (penalty + dLoss/dalpha)``: units the loss needs fall slower and survive. Values are
    clipped to [0, 1] after every step. The ``penalty`` variable is what
    :class:`ReLUBudgetSchedule` grows.

    Args:
        model: A model with relaxed (non-frozen) :class:`PolyReLUMask` layers.
        penalty: Initial L1 weight on the mask values.
        mask_learning_rate: SGD (momentum 0.9) learning rate for the mask values.
        task_loss: ``fn(model, x, y) -> scalar`` computed under ``tf.GradientTape``; the default
            is cross-entropy on the logits. RLNet passes its robust (PGD + dual BN) loss here.

    Example:
        >>> from tfsafe.models import mlp
        >>> from tfsafe.compress.linearization import linearize
        >>> search = ReLUMaskSearch(linearize(mlp(units=(16,))))
        >>> search.compile(keras.optimizers.Adam(1e-3))
    """

    def __init__(self, model, penalty=1e-3, mask_learning_rate=1.0, task_loss=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.logits = logits_model(model)
        self.masks = [m for m in mask_layers(model) if not m.frozen]
        if not self.masks:
            raise UnsupportedModelError("ReLUMaskSearch needs relaxed PolyReLUMask layers; call linearize() first.")
        self.penalty = tf.Variable(float(penalty), trainable=False, dtype=tf.float32, name="mask_penalty")
        self.mask_optimizer = keras.optimizers.SGD(mask_learning_rate, momentum=0.9)
        self.task_loss = task_loss or (lambda m, x, y: softmax_cross_entropy(y, self.logits(x, training=True)))
        self.loss_tracker = keras.metrics.Mean("task_loss")
        self.relu_tracker = keras.metrics.Mean("relu_fraction")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.relu_tracker]

    def train_step(self, data):
        x, y = data[0], data[1]
        alphas = [m.alpha for m in self.masks]
        alpha_ids = {id(v) for v in alphas}
        weights = [v for v in self.model.trainable_variables if id(v) not in alpha_ids]
        with tf.GradientTape() as tape:
            task = self.task_loss(self.model, x, y)
            l1 = tf.add_n([tf.reduce_sum(a) for a in alphas])
            loss = task + self.penalty * l1
        grads = tape.gradient(loss, weights + alphas)
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads[:len(weights)], weights) if g is not None])
        self.mask_optimizer.apply_gradients(zip(grads[len(weights):], alphas))
        for a in alphas:
            a.assign(tf.clip_by_value(a, 0.0, 1.0))
        total = float(sum(m.unit_count() for m in self.masks))
        on = tf.add_n([tf.reduce_sum(tf.cast(m.alpha > m.threshold, tf.float32)) for m in self.masks])
        self.loss_tracker.update_state(task)
        self.relu_tracker.update_state(on / total)
        return {"task_loss": self.loss_tracker.result(), "relu_fraction": on / total}

    def test_step(self, data):
        x, y = data[0], data[1]
        self.loss_tracker.update_state(softmax_cross_entropy(y, self.logits(x, training=False)))
        return {"task_loss": self.loss_tracker.result()}


class ReLUBudgetSchedule(keras.callbacks.Callback):
    """Grows the L1 penalty 1.1x when the ReLU count stalls; stops when it meets the budget.

    Checked every ``check_every`` batches. The count "stalls" when it has not fallen below
    ``(1 - min_drop)`` times the best count seen since the last check.

    Args:
        relu_budget: Target number of ReLU units.
        check_every: Batches between checks.
        growth: Factor applied to the penalty on a stall (SNL: 1.1).
        min_drop: Relative drop that counts as progress.
    """

    def __init__(self, relu_budget, check_every=5, growth=1.1, min_drop=0.01):
        super().__init__()
        self.relu_budget = int(relu_budget)
        self.check_every = int(check_every)
        self.growth = float(growth)
        self.min_drop = float(min_drop)
        self.history = []
        self.reached = False
        self._best = None
        self._batches = 0

    def _count(self):
        return sum(m.relu_count() for m in mask_layers(self._search_model()))

    def _search_model(self):
        return self.model.model if isinstance(self.model, ReLUMaskSearch) else self.model

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._batches % self.check_every:
            return
        count = self._count()
        penalty = self.model.penalty
        if count <= self.relu_budget:
            self.reached = True
            self.model.stop_training = True
        elif self._best is not None and count > (1.0 - self.min_drop) * self._best:
            penalty.assign(penalty * self.growth)
        self._best = count if self._best is None else min(self._best, count)
        self.history.append({"batch": self._batches, "relu_count": count, "penalty": float(penalty.numpy())})


def search_relu_mask(model, x, y, relu_budget, epochs=30, batch_size=64, learning_rate=1e-3,
                     penalty=1e-3, mask_learning_rate=1.0, check_every=5, task_loss=None,
                     callbacks=None, verbose=0):
    """Train the relaxed masks of ``model`` (in place) until at most ``relu_budget`` stay on.

    Returns the :class:`ReLUBudgetSchedule` (``.reached``, ``.history``). If the budget is not
    reached within ``epochs`` the masks are left as they are; :func:`binarize_masks` still
    keeps exactly ``relu_budget`` units (those with the largest ``alpha``).

    Example:
        >>> from tfsafe.data import load_digits
        >>> from tfsafe.models import mlp
        >>> from tfsafe.compress.linearization import binarize_masks, linearize, mask_relu_count
        >>> (x, y), _ = load_digits()
        >>> masked = linearize(mlp(units=(32,)))
        >>> schedule = search_relu_mask(masked, x, y, relu_budget=8, epochs=20)
        >>> mask_relu_count(binarize_masks(masked, 8))
        8
    """
    masks = [m for m in mask_layers(model) if not m.frozen]
    if not masks:
        raise UnsupportedModelError(f"'{model.name}' has no relaxed PolyReLUMask layers; call linearize() first.")
    budget = check_relu_budget(relu_budget, sum(m.unit_count() for m in masks))
    x, y = check_xy(model, x, y)
    search = ReLUMaskSearch(model, penalty=penalty, mask_learning_rate=mask_learning_rate, task_loss=task_loss)
    search.compile(optimizer=keras.optimizers.Adam(learning_rate))
    schedule = ReLUBudgetSchedule(budget, check_every=check_every)
    search.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=[schedule] + list(callbacks or []),
               verbose=verbose, shuffle=True)
    return schedule
