"""How a model gets smaller: one module per mechanism (pruning, quantization, linearization,
factorization) and :func:`strip` to turn a wrapped model back into plain Keras layers."""
