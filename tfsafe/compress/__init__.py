"""How a model gets smaller: one module per mechanism (pruning, quantization, linearization,
factorization) and :func:`strip` to turn a wrapped model back into plain Keras layers."""

# Importing the mechanism modules registers their layers, so saved models load without scopes.
from tfsafe.compress import (  # noqa: F401
    dual_bn,
    dynamic_sparsity,
    factorization,
    linearization,
    pruning,
    quantization,
)
