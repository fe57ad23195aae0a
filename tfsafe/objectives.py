"""Loss terms the safe compression methods add to the task loss.

Each is a plain function of tensors (usable inside a ``train_step``) or a ``keras.losses.Loss``.
"""

from tfsafe._keras import keras, tf
from tfsafe.compress.bit_layers import bit_size_terms

__all__ = ["entropy", "softmax_cross_entropy", "admm_penalty",
           "distillation_loss", "attention_map", "attention_transfer_loss",
           "entropy_regularized_loss", "EntropyRegularizedLoss", "RelaxLoss", "class_logits", "membership_attack_loss",
           "adversarial_regularization", "size_penalty", "safety_loss", "weighted_mean",
           "weighted_softmax_cross_entropy"]


def softmax_cross_entropy(y_true, logits):
    """Mean sparse softmax cross-entropy of integer labels against logits."""
    y_true = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_true, logits=logits))


def entropy(logits):
    """Mean Shannon entropy (nats) of the softmax of ``logits``."""
    log_p = tf.nn.log_softmax(logits)
    return tf.reduce_mean(-tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1))


def admm_penalty(variables, targets, duals, rho):
    """ADMM augmented-Lagrangian term ``(rho / 2) * sum_i ||W_i - Z_i + U_i||^2`` (scaled dual form).

    Args:
        variables: The trained tensors ``W_i`` (e.g. factors of a factorized layer).
        targets: Their projections ``Z_i`` onto the constraint set (e.g. k-means quantized).
        duals: The scaled dual variables ``U_i``.
        rho: Penalty weight (number or scalar tensor).

    Example:
        >>> float(admm_penalty([tf.ones(2)], [tf.zeros(2)], [tf.zeros(2)], 0.5))
        0.5
    """
    terms = [tf.reduce_sum(tf.square(w - z + u)) for w, z, u in zip(variables, targets, duals)]
    if not terms:
        return tf.constant(0.0)
    return 0.5 * tf.cast(rho, tf.float32) * tf.add_n(terms)


def distillation_loss(student_logits, teacher_logits, temperature=4.0):
    """Hinton knowledge distillation: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, batch mean.

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures.

    Example:
        >>> float(distillation_loss(tf.constant([[1.0, 2.0]]), tf.constant([[1.0, 2.0]])))
        0.0
    """
    t = tf.cast(temperature, tf.float32)
    teacher_log_p = tf.nn.log_softmax(tf.stop_gradient(teacher_logits) / t)
    student_log_p = tf.nn.log_softmax(student_logits / t)
    kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
    return t * t * tf.reduce_mean(kl)


def attention_map(activation):
    """Attention map of a post-ReLU activation (Zagoruyko & Komodakis): the channel mean of the
    squared activation, flattened per example and L2-normalized. Dense activations (rank 2)
    are squared and normalized directly."""
    a = tf.cast(activation, tf.float32)
    if a.shape.rank > 2:
        a = tf.reduce_mean(tf.square(a), axis=-1)
    else:
        a = tf.square(a)
    a = tf.reshape(a, [tf.shape(a)[0], -1])
    return tf.math.l2_normalize(a, axis=1)


def attention_transfer_loss(student_activations, teacher_activations):
    """Post-ReLU activation mismatch: sum over layers of the mean squared difference of the
    attention maps (RLNet weights it by 1000, as the attention-transfer paper does).

    Example:
        >>> a = [tf.ones((2, 4, 4, 3))]
        >>> float(attention_transfer_loss(a, a))
        0.0
    """
    if len(student_activations) != len(teacher_activations):
        raise ValueError(
            f"attention_transfer_loss got {len(student_activations)} student and "
            f"{len(teacher_activations)} teacher activations; they must pair up layer by layer."
        )
    terms = [tf.reduce_mean(tf.square(attention_map(s) - tf.stop_gradient(attention_map(t))))
             for s, t in zip(student_activations, teacher_activations)]
    return tf.add_n(terms) if terms else tf.constant(0.0)


def class_logits(y_pred, from_logits=True):
    """``(batch, classes >= 2)`` logits of a classifier's output, for the losses below.

    Probabilities are logged (clipped at 1e-7); a one-unit head is a binary classifier whose
    logit ``z`` becomes ``[0, z]`` and whose probability ``p`` becomes ``[log(1 - p), log p]``
    (as :class:`tfsafe.models.BinaryLogits` does), so the softmax losses read sigmoid heads too.

    Example:
        >>> class_logits([[2.0]]).numpy().tolist()
        [[0.0, 2.0]]
    """
    y_pred = tf.convert_to_tensor(y_pred, tf.float32)
    binary = y_pred.shape[-1] == 1
    if from_logits:
        return tf.concat([tf.zeros_like(y_pred), y_pred], axis=-1) if binary else y_pred
    if binary:
        p = tf.clip_by_value(y_pred, 1e-7, 1.0 - 1e-7)
        return tf.concat([tf.math.log(1.0 - p), tf.math.log(p)], axis=-1)
    return tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0))


def entropy_regularized_loss(y_true, logits, weight=0.1):
    """MIA-SafeCompress's task loss: ``CE - weight * H(softmax(logits))``, batch mean.

    Subtracting the entropy rewards less confident outputs, which narrows the gap between the
    confidence on members and on non-members that membership attacks read (paper: weight 0.1).
    """
    return softmax_cross_entropy(y_true, logits) - weight * entropy(logits)


def _entropy_regularized_terms(y_true, y_pred, from_logits, weight):
    """Per example: ``(CE - weight * H(p), CE, log p, integer labels)`` of a classifier's output."""
    logits = class_logits(y_pred, from_logits)
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    log_p = tf.nn.log_softmax(logits)
    return cross_entropy + weight * tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1), cross_entropy, log_p, labels


@keras.utils.register_keras_serializable(package="tfsafe")
class EntropyRegularizedLoss(keras.losses.Loss):
    """``CE - weight * H(p)`` per example, as a Keras loss for ``compile``.

    Args:
        weight: entropy weight (MIA-SafeCompress: 0.1).
        from_logits: whether ``y_pred`` are logits (tfsafe's convention) or probabilities.

    Example:
        >>> loss = EntropyRegularizedLoss(weight=0.1)
        >>> float(loss([0], [[0.0, 0.0]])) < float(keras.losses.SparseCategoricalCrossentropy(True)([0], [[0.0, 0.0]]))
        True
    """

    def __init__(self, weight=0.1, from_logits=True, name="entropy_regularized_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight = weight
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        return _entropy_regularized_terms(y_true, y_pred, self.from_logits, self.weight)[0]

    def get_config(self):
        config = super().get_config()
        config.update({"weight": self.weight, "from_logits": self.from_logits})
        return config


@keras.utils.register_keras_serializable(package="tfsafe")
class RelaxLoss(keras.losses.Loss):
    """RelaxLoss (Chen, Yu and Fritz, ICLR 2022): keep the members' loss near a level ``alpha``.

    Membership attacks read how much lower the loss is on members than on non-members. While
    the batch's mean cross-entropy ``L`` is at or above ``alpha`` this is the ordinary loss
    (``CE - entropy_weight * H(p)``, MIA-SafeCompress's task loss). Below ``alpha`` it
    alternates, batch by batch, between the paper's two steps: gradient *ascent* on the
    cross-entropy (``-CE``), and *posterior flattening*: on the correctly classified examples
    the target keeps the predicted true-class probability and spreads the rest evenly over the
    other classes (misclassified examples keep their one-hot target). ``alpha`` near the
    validation loss makes members' losses look like non-members'.

    Args:
        alpha: the loss level, in nats (> 0).
        entropy_weight: ``w`` of the ``- w * H(p)`` term added in the ordinary step.
        from_logits: whether ``y_pred`` are logits (tfsafe's convention) or probabilities.
        **kwargs: ``keras.losses.Loss`` arguments (``name``, ``reduction``).

    Inputs: integer labels of shape ``(batch,)`` or ``(batch, 1)`` and logits (or probabilities)
    ``(batch, classes)``, a one-unit head read as binary (:func:`class_logits`); returns the
    per-example loss ``(batch,)`` (float32).

    Example:
        >>> loss = RelaxLoss(alpha=1.0)
        >>> float(loss([0, 1], [[0.0, 0.0], [0.0, 0.0]])) > 0  # CE = log 2 < 1.0: an ascent step
        False
    """

    def __init__(self, alpha=1.0, entropy_weight=0.0, from_logits=True, name="relax_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = alpha
        self.entropy_weight = entropy_weight
        self.from_logits = from_logits
        self._calls = tf.Variable(0, trainable=False, dtype=tf.int64)

    def call(self, y_true, y_pred):
        ordinary, cross_entropy, log_p, labels = _entropy_regularized_terms(y_true, y_pred, self.from_logits,
                                                                            self.entropy_weight)
        classes = tf.shape(log_p)[-1]
        one_hot = tf.one_hot(labels, classes)
        p_true = tf.stop_gradient(tf.reduce_sum(tf.exp(log_p) * one_hot, axis=-1, keepdims=True))
        spread = (1.0 - p_true) / tf.cast(tf.maximum(classes - 1, 1), tf.float32)
        flat = one_hot * p_true + (1.0 - one_hot) * spread
        correct = tf.equal(tf.argmax(log_p, axis=-1, output_type=tf.int32), labels)[:, None]
        flattened = -tf.reduce_sum(tf.where(correct, flat, one_hot) * log_p, axis=-1)
        step = self._calls.assign_add(1)
        relaxed = tf.where(tf.equal(step % 2, 1), -cross_entropy, flattened)
        return tf.where(tf.reduce_mean(cross_entropy) >= self.alpha, ordinary, relaxed)

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "entropy_weight": self.entropy_weight, "from_logits": self.from_logits})
        return config


def membership_attack_loss(member_scores, nonmember_scores):
    """The simulated attacker's loss: binary cross-entropy, members labelled 1, non-members 0.

    Scores are the attacker's logits of P(member). The attacker minimizes this (Nasr et al.'s
    inference gain, negated).
    """
    member_scores = tf.reshape(member_scores, [-1])
    nonmember_scores = tf.reshape(nonmember_scores, [-1])
    return 0.5 * (tf.reduce_mean(tf.nn.softplus(-member_scores)) + tf.reduce_mean(tf.nn.softplus(nonmember_scores)))


def adversarial_regularization(member_scores, weight=1.0, form="bce"):
    """Nasr et al.'s privacy term for the classifier (add it to the task loss and minimize).

    ``member_scores`` are the attacker's logits of P(member) on the classifier's own training
    examples. The term falls as the attacker's output on members moves to "non-member", so
    minimizing ``CE + term`` trains the classifier to hide its members (the sign that protects
    them; maximizing the attacker's gain on members would leak more).

    Args:
        member_scores: attacker logits on a batch of members.
        weight: lambda, the privacy weight.
        form: ``"bce"``: ``weight * mean(-log(1 - h))`` (bounded below by 0, what tfsafe uses);
            ``"log"``: ``weight * mean(log h)``, Nasr et al.'s original term.
    """
    scores = tf.reshape(member_scores, [-1])
    if form == "bce":
        return weight * tf.reduce_mean(tf.nn.softplus(scores))
    if form == "log":
        return -weight * tf.reduce_mean(tf.nn.softplus(-scores))
    raise ValueError(f"form must be 'bce' or 'log', got {form!r}.")


def size_penalty(model):
    """Self-compression size term Q: learned bits per weight of the original network.

    ``Q = sum over learnable-bit layers of (weights per output channel * sum_i relu(b_i))``
    divided by the number of kernel weights those layers had when quantized (spatial size x
    input channels x output channels), so Q starts at ``init_bits`` and falls as channels
    lose bits. Differentiable in the bit depths; add ``gamma * Q`` to the loss.

    Args:
        model: a model from :func:`tfsafe.compress.quantization.quantize_learnable`.

    Example:
        >>> from tfsafe.compress.quantization import quantize_learnable
        >>> from tfsafe.models import small_cnn
        >>> float(size_penalty(quantize_learnable(small_cnn(), init_bits=6)))
        6.0
    """

    terms, total = bit_size_terms(model)
    return tf.add_n([per_channel * tf.reduce_sum(tf.nn.relu(bits)) for bits, per_channel in terms]) / total


def safety_loss(y_safe, logits_safe):
    """Safety-set term of safety-driven self-compression: mean cross-entropy on safety examples.

    The safety set holds critical, uncertain and diverse training/validation examples (see
    :func:`tfsafe.safety.safety_set.select_safety_set`); weighting their loss by lambda keeps
    the compressed model right on them. Same math as :func:`softmax_cross_entropy`, named for
    what it is used for.
    """
    return softmax_cross_entropy(y_safe, logits_safe)


def weighted_mean(values, sample_weight=None):
    """``sum(w * v) / sum(w)`` over a batch of per-example ``values`` (the plain mean without weights).

    Example:
        >>> float(weighted_mean(tf.constant([1.0, 3.0]), tf.constant([1.0, 0.0])))
        1.0
    """
    values = tf.reshape(values, [-1])
    if sample_weight is None:
        return tf.reduce_mean(values)
    weight = tf.cast(tf.reshape(sample_weight, [-1]), values.dtype)
    return tf.reduce_sum(weight * values) / tf.reduce_sum(weight)


def weighted_softmax_cross_entropy(y_true, logits, sample_weight=None):
    """Softmax cross-entropy of integer labels against logits, averaged with Keras sample weights.

    What the adversarial training steps (:class:`~tfsafe.safety.adversarial_training.AdversarialModel`,
    :class:`~tfsafe.methods.atmc.ATMCModel`) use for their clean and adversarial terms.
    """
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    return weighted_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), sample_weight)
