"""How a model gets smaller: one module per mechanism (pruning, quantization, linearization,
factorization) and :mod:`tfsafe.compress.strip` to turn a wrapped model back into plain Keras
layers.

Importing this package imports every mechanism module, which registers their layers (saved
models load without custom scopes), their strippers, weight statistics and ReLU counters.

The function ``strip`` is not re-exported here, because its module has the same name: use
``tfsafe.strip`` or ``from tfsafe.compress.strip import strip``.

Example:
    >>> from tfsafe.models import small_cnn
    >>> pruned = prune_safe(small_cnn(), 0.9)
    >>> len(prunable_wrappers(pruned))
    4
"""

from tfsafe.compress.channel_removal import RemovalPlan, removal_plan
from tfsafe.compress.dual_bn import (
    DualBatchNormalization,
    bn_route,
    dual_batchnorm,
    dual_bn_layers,
    set_bn_route,
    with_inference_path,
)
from tfsafe.compress.dynamic_sparsity import DynamicSparsity, drop_and_grow, prune_to_target
from tfsafe.compress.exact_int8 import exact_int8_model, to_int8_tflite
from tfsafe.compress.factorization import (
    FactorizedConv2D,
    FactorizedDense,
    LowRankConv2D,
    LowRankDense,
    factorize,
    frozen_kernels,
    low_rank,
    low_rank_ranks_for_budget,
    matrix_layers,
)
from tfsafe.compress.linearization import (
    PolyReLUMask,
    UnitInterval,
    binarize_masks,
    linearize,
    mask_layers,
    mask_relu_count,
)
from tfsafe.compress.pruning import PrunableSafe, is_prunable, prunable_wrappers, prune_safe
from tfsafe.compress.quantization import (
    BitRange,
    ChannelGate,
    LearnableBitQuant,
    LearnableBitQuantizeConfig,
    WeightOnlyScheme,
    bake_weights,
    dead_channels,
    learnable_layers,
    learned_size,
    quantize_learnable,
    restore_channels,
)
from tfsafe.compress.strip import is_wrapped, register_model_pass, register_stripper

__all__ = [
    # pruning and dynamic sparsity
    "PrunableSafe", "prune_safe", "is_prunable", "prunable_wrappers", "DynamicSparsity", "drop_and_grow",
    "prune_to_target",
    # learnable bits (self-compression) and exact int8 export
    "LearnableBitQuant", "LearnableBitQuantizeConfig", "ChannelGate", "BitRange", "WeightOnlyScheme",
    "quantize_learnable", "learnable_layers", "learned_size", "dead_channels", "restore_channels", "bake_weights",
    "RemovalPlan", "removal_plan", "exact_int8_model", "to_int8_tflite",
    # factorization (ATMC) and low rank (ALR)
    "FactorizedDense", "FactorizedConv2D", "LowRankDense", "LowRankConv2D", "factorize", "low_rank",
    "low_rank_ranks_for_budget", "matrix_layers", "frozen_kernels",
    # fewer ReLUs (RLNet / SNL) and dual batch norm
    "PolyReLUMask", "UnitInterval", "linearize", "binarize_masks", "mask_layers", "mask_relu_count",
    "DualBatchNormalization", "dual_batchnorm", "dual_bn_layers", "set_bn_route", "bn_route", "with_inference_path",
    # strip() registries
    "register_stripper", "register_model_pass", "is_wrapped",
]
