"""The compression methods, one contract: ``tfsafe.methods.get(name, **params).compress(model, splits)``.

Registered names (:func:`names`): ``safecompress`` (MIA-SafeCompress, :class:`SafeCompress`),
``atmc`` (:class:`ATMC`), ``self_compress`` (:class:`SelfCompress`), ``rlnet``
(:class:`RLNet`), ``baseline`` (TF-MOT pruning, :class:`TFMOTPruning`) and ``dp_sgd``
(DP-SGD, optionally + pruning, :class:`DPSGD`). Each is a
:class:`CompressionMethod` whose constructor takes every hyper-parameter, with one verb,
``compress``, returning a :class:`CompressionResult`; :func:`register` plugs in new ones.
The SNL ReLU mask search RLNet runs is in :mod:`tfsafe.methods.relu_mask_search`.

Modules: :mod:`~tfsafe.methods.base` (the contract), :mod:`~tfsafe.methods.registry`,
:mod:`~tfsafe.methods.safecompress` (+ ``safecompress_selection``, ``adversarial_regularization``),
:mod:`~tfsafe.methods.atmc` (+ ``atmc_model``, ``atmc_callbacks``, ``atmc_projection``,
``atmc_baselines``), :mod:`~tfsafe.methods.self_compress`, :mod:`~tfsafe.methods.rlnet`,
:mod:`~tfsafe.methods.baseline`, :mod:`~tfsafe.methods.dp_sgd`.

The 0.x one-call functions ``safecompress``, ``self_compress`` and ``rlnet`` share their
module's name, so they are not re-exported here (the package attribute stays the module): use
``tfsafe.safecompress`` / ``tfsafe.self_compress`` / ``tfsafe.rlnet`` (deprecated).

Example:
    >>> import tfsafe.methods
    >>> method = tfsafe.methods.get("safecompress", target_sparsity=0.9)
    >>> result = method.compress(model, splits)  # doctest: +SKIP
    >>> result.stripped, result.selection["kept"]  # doctest: +SKIP
"""

from tfsafe.methods.adversarial_regularization import AdversarialRegularization
from tfsafe.methods.atmc import ATMC, ATMCResult, atmc_compress
from tfsafe.methods.atmc_baselines import adversarial_low_rank, adversarial_pruning, dense_training, nap
from tfsafe.methods.atmc_callbacks import ADMMUpdate, BestProjectedCheckpoint
from tfsafe.methods.atmc_model import ATMCModel
from tfsafe.methods.atmc_projection import budget_for_ratio, kmeans_quantize
from tfsafe.methods.base import CompressionMethod, CompressionResult, StageCallback, default_eps
from tfsafe.methods.baseline import TFMOTPruning
from tfsafe.methods.dp_sgd import DPSGD
from tfsafe.methods.registry import get, method_class, names, register, unregister
from tfsafe.methods.relu_mask_search import ReLUBudgetSchedule, ReLUMaskSearch, search_relu_mask
from tfsafe.methods.rlnet import (
    RLNet,
    RLNetResult,
    RLNetTrainer,
    RobustLoss,
    finetune_student,
    rlnet_cnn,
    search_robust_mask,
    train_robust_teacher,
)
from tfsafe.methods.safecompress import SafeCompress, SafeCompressResult
from tfsafe.methods.safecompress_selection import CandidateSelection, CandidateTests, tm_score
from tfsafe.methods.self_compress import SafetyMonitor, SelfCompress, SelfCompressingModel, SelfCompressResult

for _cls in (SafeCompress, ATMC, SelfCompress, RLNet, TFMOTPruning, DPSGD):
    register(_cls.name, _cls)
del _cls

__all__ = [
    # the contract and the registry
    "CompressionMethod", "CompressionResult", "StageCallback", "get", "names", "register", "unregister",
    "method_class",
    "default_eps",
    # the methods
    "SafeCompress", "ATMC", "SelfCompress", "RLNet", "TFMOTPruning", "DPSGD",
    # MIA-SafeCompress parts
    "SafeCompressResult", "CandidateSelection", "CandidateTests", "AdversarialRegularization", "tm_score",
    # ATMC parts and its baselines
    "ATMCModel", "ADMMUpdate", "BestProjectedCheckpoint", "ATMCResult", "atmc_compress", "budget_for_ratio",
    "kmeans_quantize", "dense_training", "nap", "adversarial_pruning", "adversarial_low_rank",
    # safety-driven self-compression parts
    "SelfCompressingModel", "SafetyMonitor", "SelfCompressResult",
    # RLNet parts
    "rlnet_cnn", "RobustLoss", "RLNetTrainer", "train_robust_teacher", "search_robust_mask", "finetune_student",
    "RLNetResult",
    # SNL ReLU mask search (used by RLNet)
    "ReLUMaskSearch", "ReLUBudgetSchedule", "search_relu_mask",
]
