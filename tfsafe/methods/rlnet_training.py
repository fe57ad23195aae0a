"""RLNet's training pieces: augmentations, the robust loss (dual BN paths, KD, attention transfer), its trainer."""

from tfsafe._keras import keras, tf
from tfsafe.compress.dual_bn import set_bn_route
from tfsafe.compress.linearization import PolyReLUMask, relu_form
from tfsafe.errors import InputError, UnsupportedModelError
from tfsafe.models import logits_model
from tfsafe.objectives import attention_transfer_loss, distillation_loss, softmax_cross_entropy
from tfsafe.safety.adversarial import pgd_perturb
from tfsafe.safety.adversarial_training import TRAIN_ATTACKS, CatastrophicOverfittingGuard, EpsilonRamp

__all__ = ["augment_images", "relu_sites", "relu_activations_model", "RobustLoss", "RLNetTrainer", "fit_robust",
           "RobustLossGuard"]

GUARD_EXAMPLES = 256  # held-out validation examples the catastrophic-overfitting guard attacks


def augment_images(x, max_shift=0.1, contrast=(0.7, 1.3), brightness=0.1, noise=0.08):
    """Random per-example shift, contrast, brightness and Gaussian noise; clipped to [0, 1].

    Light augmentations for images in [0, 1] (graph-safe): they widen the clean distribution
    towards natural corruptions without moving it far from the test images.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    n = tf.shape(x)[0]
    height, width = x.shape[1], x.shape[2]
    if max_shift:
        dy = tf.random.uniform([n], -max_shift, max_shift) * height
        dx = tf.random.uniform([n], -max_shift, max_shift) * width
        ones, zeros = tf.ones([n]), tf.zeros([n])
        transforms = tf.stack([ones, zeros, -tf.round(dx), zeros, ones, -tf.round(dy), zeros, zeros], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
            interpolation="NEAREST", fill_mode="CONSTANT")
    shape = tf.stack([n, 1, 1, 1])
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * tf.random.uniform(shape, *contrast) + mean
    x = x + tf.random.uniform(shape, -brightness, brightness)
    x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform(shape, 0.0, noise)
    return tf.clip_by_value(x, 0.0, 1.0)


def relu_sites(model):
    """The output tensors of ``model``'s ReLU sites (ReLU layers, fused ReLUs, PolyReLUMask), in graph order."""
    sites = []
    for layer in model.layers:
        if isinstance(layer, PolyReLUMask) or relu_form(layer):
            if len(layer._inbound_nodes) != 1:
                raise UnsupportedModelError(
                    f"ReLU layer '{layer.name}' is shared; attention transfer needs one output per ReLU."
                )
            sites.append(layer.output)
    return sites


def relu_activations_model(model):
    """``keras.Model`` returning ``[logits, post-ReLU activation 1, 2, ...]`` (graph order).

    ReLU sites are ReLU layers, ``Activation('relu')``, layers with ``activation='relu'`` and
    :class:`PolyReLUMask` layers, so a model and its linearized copy pair up site by site.
    """
    logits = logits_model(model)
    return keras.Model(model.inputs, [logits.outputs[0]] + relu_sites(model), name=f"{model.name}_relu_maps")


class RobustLoss:
    """The RLNet objective for one batch: ``fn(model, x, y) -> scalar`` (graph-safe).

    Clean path: ``CE`` on (augmented) clean inputs through the clean BN route. Adversarial path:
    ``CE`` on PGD inputs crafted against the adversarial route. With a teacher each path's loss
    is ``(1 - kd_weight) CE + kd_weight KD_T + at_weight AT`` against the teacher on the same
    route and inputs. The total is ``(1 - adv_weight) clean + adv_weight adversarial``. After
    the batch every dual BN layer is routed back to its ``inference_path``.

    Args:
        eps: PGD radius (Linf); ``current_eps`` holds the current value (ramped by
            :class:`~tfsafe.safety.adversarial_training.EpsilonRamp` with ``target=`` this loss).
        pgd_steps: PGD steps while training; step ``2.5 * eps / steps``.
        teacher: Optional all-ReLU teacher for KD and attention transfer.
        temperature: KD temperature (RLNet: 4).
        kd_weight: Weight of the KD term (RLNet: 0.5, and 0.5 for CE).
        at_weight: Weight of the post-ReLU attention-transfer term (RLNet: 1000).
        adv_weight: Weight of the adversarial path.
        adversarial: ``False`` trains the clean path only (the non-robust baseline).
        augment: Apply :func:`augment_images` to the clean inputs.
        attack: How the adversarial path's inputs are crafted: ``"pgd"`` (``pgd_steps`` steps),
            ``"fgsm_rs"`` (one step of ``fgsm_alpha * eps`` from a uniform random start, Wong
            et al. 2020) or ``"free"`` (Shafahi et al. 2019: :class:`RLNetTrainer` replays each
            minibatch ``free_replays`` times and carries the perturbation over). The boolean
            variable ``use_pgd`` (set by :class:`RobustLossGuard`) switches to PGD.
        fgsm_alpha: FGSM-RS step as a multiple of the current eps.
        free_replays: Replays per minibatch of free training.
    """

    def __init__(self, eps=0.3, pgd_steps=7, teacher=None, temperature=4.0, kd_weight=0.5, at_weight=1000.0,
                 adv_weight=0.5, adversarial=True, augment=True, attack="pgd", fgsm_alpha=1.25, free_replays=4):
        if adversarial and not float(eps) > 0:
            raise InputError(f"eps must be > 0 for adversarial training, got {eps}; or pass adversarial=False.")
        if int(pgd_steps) < 1:
            raise InputError(f"pgd_steps must be >= 1, got {pgd_steps}.")
        for name, value in (("kd_weight", kd_weight), ("adv_weight", adv_weight)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}.")
        self.eps = float(eps)
        self.current_eps = tf.Variable(self.eps, trainable=False, dtype=tf.float32, name="rlnet_eps")
        self.pgd_steps = int(pgd_steps)
        self.teacher = teacher
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight) if teacher is not None else 0.0
        self.at_weight = float(at_weight) if teacher is not None else 0.0
        self.adv_weight = float(adv_weight) if adversarial else 0.0
        self.adversarial = bool(adversarial)
        self.augment = bool(augment)
        if attack not in TRAIN_ATTACKS:
            raise InputError(f"attack must be one of {', '.join(TRAIN_ATTACKS)}, got {attack!r}.")
        if int(free_replays) < 1 or not float(fgsm_alpha) > 0:
            raise InputError(f"free_replays must be >= 1 and fgsm_alpha > 0, got {free_replays}, {fgsm_alpha}.")
        self.attack = attack
        self.fgsm_alpha = float(fgsm_alpha)
        self.free_replays = int(free_replays)
        self.use_pgd = tf.Variable(False, trainable=False, dtype=tf.bool, name="rlnet_use_pgd")
        self._maps = {}

    @property
    def eps_var(self):
        """The 0.x name of ``current_eps``."""
        return self.current_eps

    def _maps_model(self, model):
        if id(model) not in self._maps:  # the model is kept alive with its map so the id stays unique
            self._maps[id(model)] = (model, relu_activations_model(model))
        return self._maps[id(model)][1]

    def _path_loss(self, model, x, y, route):
        set_bn_route(model, route)
        use_at = self.at_weight > 0
        if use_at:
            outputs = self._maps_model(model)(x, training=True)
            logits, maps = outputs[0], outputs[1:]
        else:
            logits, maps = logits_model(model)(x, training=True), []
        ce = softmax_cross_entropy(y, logits)
        if self.teacher is None:
            return ce, logits
        set_bn_route(self.teacher, route)
        t_out = self._maps_model(self.teacher)(x, training=False)
        loss = (1.0 - self.kd_weight) * ce + self.kd_weight * distillation_loss(logits, t_out[0], self.temperature)
        if use_at:
            t_maps = t_out[1:]
            if len(t_maps) != len(maps):
                raise UnsupportedModelError(
                    f"The student has {len(maps)} ReLU sites and the teacher {len(t_maps)}; the student must "
                    "be a linearized copy of the teacher."
                )
            loss += self.at_weight * attention_transfer_loss(maps, t_maps)
        return loss, logits

    def craft(self, model, x, y):
        """Adversarial inputs for the adversarial path (PGD, or FGSM-RS unless ``use_pgd``); graph-safe."""
        set_bn_route(model, "adversarial")
        logits = logits_model(model)

        def pgd():
            return pgd_perturb(logits, x, y, self.current_eps, self.pgd_steps, training=False)

        if self.attack != "fgsm_rs":
            return pgd()

        def fast():
            return pgd_perturb(logits, x, y, self.current_eps, 1, self.fgsm_alpha * self.current_eps,
                               random_start=True, training=False)

        return tf.cond(self.use_pgd, pgd, fast)

    def __call__(self, model, x, y, x_adv=None):
        """The loss of one batch; ``x_adv`` given (free training) replaces the crafted inputs."""
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        x_clean = augment_images(x) if self.augment else tf.convert_to_tensor(x, tf.float32)
        total, _ = self._path_loss(model, x_clean, y, "clean")
        total = (1.0 - self.adv_weight) * total
        if self.adversarial:
            if x_adv is None:
                x_adv = tf.stop_gradient(self.craft(model, x_clean, y))
            adv, _ = self._path_loss(model, x_adv, y, "adversarial")
            total += self.adv_weight * adv
        set_bn_route(model, "inference")
        if self.teacher is not None:
            set_bn_route(self.teacher, "inference")
        return total


class RLNetTrainer(keras.Model):
    """Trains ``model`` with a :class:`RobustLoss` in ``train_step`` (stages 1 and 3).

    Example:
        >>> trainer = RLNetTrainer(rlnet_cnn(), RobustLoss(eps=0.1, pgd_steps=3))
        >>> trainer.compile(keras.optimizers.Adam(1e-3))
    """

    def __init__(self, model, loss_fn, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.loss_fn = loss_fn
        self._logits = logits_model(model)
        self.loss_tracker = keras.metrics.Mean("loss")
        self.acc_tracker = keras.metrics.SparseCategoricalAccuracy("accuracy")
        self.free_delta = None
        if loss_fn.adversarial and loss_fn.attack == "free":
            shape = [None, *model.input_shape[1:]]
            self.free_delta = tf.Variable(tf.zeros([0, *shape[1:]]), shape=tf.TensorShape(shape), trainable=False,
                                          name="free_delta")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker]

    @property
    def eps(self):
        return self.loss_fn.eps

    @property
    def use_pgd(self):
        return self.loss_fn.use_pgd

    norm = "linf"
    clip = (0.0, 1.0)

    def _apply(self, x, y, x_adv=None):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            if x_adv is not None:
                tape.watch(x_adv)
            loss = self.loss_fn(self.model, x, y, x_adv=x_adv)
            if self.model.losses:
                loss += tf.add_n(self.model.losses)
        grads = tape.gradient(loss, variables + ([x_adv] if x_adv is not None else []))
        self.optimizer.apply_gradients(zip(grads[:len(variables)], variables))
        return loss, (grads[-1] if x_adv is not None else None)

    def _free_step(self, x, y):
        """Free training: ``free_replays`` weight updates per minibatch, each one also an eps step of delta."""
        eps = self.loss_fn.current_eps
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        stored = self.free_delta.read_value()
        take = tf.minimum(tf.shape(x)[0], tf.shape(stored)[0])
        delta = tf.concat([stored[:take], tf.zeros_like(x[take:])], 0)
        delta = tf.cond(self.loss_fn.use_pgd,
                        lambda: tf.stop_gradient(self.loss_fn.craft(self.model, x, y)) - x, lambda: delta)
        for _ in range(self.loss_fn.free_replays):
            delta = tf.clip_by_value(x + tf.clip_by_value(delta, -eps, eps), 0.0, 1.0) - x
            loss, g = self._apply(x, y, x + delta)
            delta = tf.stop_gradient(delta + eps * tf.sign(g))
        delta = tf.clip_by_value(x + tf.clip_by_value(delta, -eps, eps), 0.0, 1.0) - x
        self.free_delta.assign(tf.concat([delta, stored[take:]], 0))
        return loss

    def train_step(self, data):
        x, y = data[0], data[1]
        if self.free_delta is not None:
            loss = self._free_step(x, y)
        else:
            loss, _ = self._apply(x, y)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        x, y = data[0], data[1]
        self.acc_tracker.update_state(tf.reshape(y, [-1]), self._logits(x, training=False))
        return {"accuracy": self.acc_tracker.result()}


class RobustLossGuard(CatastrophicOverfittingGuard):
    """:class:`CatastrophicOverfittingGuard` for an :class:`RLNetTrainer` (fast RLNet training).

    Attacks the wrapped model's adversarial BN route on the held-out batch after every epoch
    and, when PGD accuracy collapses, switches the :class:`RobustLoss` to PGD (``use_pgd``).
    """

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, RLNetTrainer):
            raise InputError("RobustLossGuard works only with an RLNetTrainer.")

    def on_epoch_end(self, epoch, logs=None):
        set_bn_route(self.model.model, "adversarial")
        try:
            super().on_epoch_end(epoch, logs)
        finally:
            set_bn_route(self.model.model, "inference")


def fit_robust(model, loss_fn, x, y, epochs, batch_size, learning_rate, validation_data, callbacks, verbose,
               ramp_epochs=0.0):
    """``fit`` ``model`` on ``loss_fn`` with an :class:`RLNetTrainer` (Adam), eps ramped; returns the History.

    A fast ``loss_fn.attack`` with ``validation_data`` gets a :class:`RobustLossGuard` on its
    first 256 examples (fall back to PGD on a collapse); its records are in ``history.guard``.
    """
    trainer = RLNetTrainer(model, loss_fn)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    cbs = list(callbacks or [])
    if loss_fn.adversarial and ramp_epochs > 0:
        cbs.append(EpsilonRamp(ramp_epochs, target=loss_fn))
    guard = None
    if loss_fn.adversarial and loss_fn.attack != "pgd" and validation_data is not None:
        xv, yv = validation_data
        guard = RobustLossGuard(xv[:GUARD_EXAMPLES], yv[:GUARD_EXAMPLES], eps=loss_fn.eps, steps=10, action="pgd")
        cbs.append(guard)
    history = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                          callbacks=cbs, verbose=verbose, shuffle=True)
    set_bn_route(model, "inference")
    history.guard = None if guard is None else {"records": guard.records, "triggered_epoch": guard.triggered_epoch}
    return history
