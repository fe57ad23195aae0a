"""The published pipelines, built from tfsafe.compress, tfsafe.safety and tfsafe.objectives.

- :mod:`tfsafe.methods.safecompress`: MIA-SafeCompress (:class:`SafeCompress`).
- :mod:`tfsafe.methods.atmc`: ATMC (:func:`atmc_compress`, :class:`ATMCModel`) and
  :mod:`tfsafe.methods.atmc_baselines` (NAP, DA, AP, ALR).
- :mod:`tfsafe.methods.self_compress`: safety-driven self-compression.
- :mod:`tfsafe.methods.rlnet`: RLNet (robust teacher, ReLU mask, distilled student).
- :mod:`tfsafe.methods.relu_mask_search`: the SNL ReLU mask search RLNet runs.

The one-call functions ``safecompress``, ``self_compress`` and ``rlnet`` share their module's
name, so they are not re-exported here (the package attribute stays the module): use
``tfsafe.safecompress`` / ``tfsafe.self_compress`` / ``tfsafe.rlnet``, or import them from
their modules.
"""

from tfsafe.methods.atmc import (
    ADMMUpdate,
    ATMCModel,
    ATMCResult,
    BestProjectedCheckpoint,
    atmc_compress,
    budget_for_ratio,
    kmeans_quantize,
)
from tfsafe.methods.atmc_baselines import adversarial_low_rank, adversarial_pruning, dense_training, nap
from tfsafe.methods.relu_mask_search import ReLUBudgetSchedule, ReLUMaskSearch, search_relu_mask
from tfsafe.methods.rlnet import (
    RLNetResult,
    RLNetTrainer,
    RobustLoss,
    finetune_student,
    rlnet_cnn,
    search_robust_mask,
    train_robust_teacher,
)
from tfsafe.methods.safecompress import (
    AdversarialRegularization,
    CandidateSelection,
    CandidateTests,
    SafeCompress,
    SafeCompressResult,
    tm_score,
)
from tfsafe.methods.self_compress import SafetyMonitor, SelfCompressingModel, SelfCompressResult

__all__ = [
    # MIA-SafeCompress
    "SafeCompress", "SafeCompressResult", "CandidateSelection", "CandidateTests", "AdversarialRegularization",
    "tm_score",
    # ATMC and its baselines
    "ATMCModel", "ADMMUpdate", "BestProjectedCheckpoint", "ATMCResult", "atmc_compress", "budget_for_ratio",
    "kmeans_quantize", "dense_training", "nap", "adversarial_pruning", "adversarial_low_rank",
    # safety-driven self-compression
    "SelfCompressingModel", "SafetyMonitor", "SelfCompressResult",
    # RLNet
    "rlnet_cnn", "RobustLoss", "RLNetTrainer", "train_robust_teacher", "search_robust_mask", "finetune_student",
    "RLNetResult",
    # SNL ReLU mask search (used by RLNet)
    "ReLUMaskSearch", "ReLUBudgetSchedule", "search_relu_mask",
]
