"""Loss terms the safe compression methods add to the task loss.

Each is a plain function of tensors (usable inside a ``train_step``) or a ``keras.losses.Loss``.
"""

from tfsafe._keras import tf

__all__ = ["entropy", "softmax_cross_entropy"]


def softmax_cross_entropy(y_true, logits):
    """Mean sparse softmax cross-entropy of integer labels against logits."""
    y_true = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_true, logits=logits))


def entropy(logits):
    """Mean Shannon entropy (nats) of the softmax of ``logits``."""
    log_p = tf.nn.log_softmax(logits)
    return tf.reduce_mean(-tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1))
