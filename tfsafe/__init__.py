"""tfsafe: compress Keras models for phones and edge devices while keeping them safe.

Importing tfsafe selects Keras 2 (``tf_keras``) for TensorFlow Model Optimization (see
:mod:`tfsafe._keras`) and registers every tfsafe layer, wrapper and training model with Keras,
so saved models load without custom scopes. The names below are the main entry points; the
subpackages :mod:`tfsafe.compress`, :mod:`tfsafe.safety` and :mod:`tfsafe.methods` export more.

Example:
    >>> import tfsafe
    >>> pruned = tfsafe.prune_safe(tfsafe.small_cnn(), 0.9)
    >>> round(tfsafe.model_size(tfsafe.strip(pruned))["sparsity"], 2)
    0.9
"""

__version__ = "0.1.0"

from tfsafe._keras import keras, tf, tfmot, to_tf_keras  # noqa: E402
from tfsafe.compress.dual_bn import DualBatchNormalization, dual_batchnorm  # noqa: E402
from tfsafe.compress.dynamic_sparsity import DynamicSparsity  # noqa: E402
from tfsafe.compress.factorization import (  # noqa: E402
    FactorizedConv2D,
    FactorizedDense,
    LowRankConv2D,
    LowRankDense,
    factorize,
    low_rank,
)
from tfsafe.compress.linearization import PolyReLUMask, linearize  # noqa: E402
from tfsafe.compress.pruning import PrunableSafe, prune_safe  # noqa: E402
from tfsafe.compress.quantization import LearnableBitQuant, quantize_learnable  # noqa: E402
from tfsafe.compress.strip import strip  # noqa: E402
from tfsafe.data import (  # noqa: E402
    MembershipSplits,
    data_kind,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    membership_split,
    membership_split_from_train_test,
)
from tfsafe.data_match import check_data_matches_model  # noqa: E402
from tfsafe.errors import InputError, MissingDependencyError, TfsafeError, UnsupportedModelError  # noqa: E402
from tfsafe.io import load_model, save_model  # noqa: E402
from tfsafe.methods.atmc import ATMCModel, atmc_compress  # noqa: E402
from tfsafe.methods.rlnet import rlnet  # noqa: E402
from tfsafe.methods.safecompress import SafeCompress, safecompress  # noqa: E402
from tfsafe.methods.self_compress import self_compress  # noqa: E402
from tfsafe.metrics import compression_ratio, count_nonzero, count_params, model_size, relu_count, sparsity  # noqa: E402
from tfsafe.models import accuracy, copy_model, lenet, logits_model, mlp, predict_logits, small_cnn  # noqa: E402
from tfsafe.pipeline import compress_model  # noqa: E402
from tfsafe.preprocessing import InputRangeWarning, Preprocessing, decide_preprocessing, default_attack_eps  # noqa: E402
from tfsafe.recipes import load_recipe  # noqa: E402
from tfsafe.report import SafetyReport  # noqa: E402
from tfsafe.safety.adversarial import fgsm_attack, pgd_attack  # noqa: E402
from tfsafe.safety.adversarial_training import AdversarialModel, EpsilonRamp  # noqa: E402
from tfsafe.safety.corruptions import CORRUPTIONS, corrupt, corruption_accuracy  # noqa: E402
from tfsafe.safety.evaluate import evaluate_safety  # noqa: E402
from tfsafe.safety.lira import lira_audit, train_reference_models  # noqa: E402
from tfsafe.safety.membership import MembershipAudit, audit_membership  # noqa: E402
from tfsafe.safety.robust_accuracy import adversarial_accuracy, transfer_attack  # noqa: E402
from tfsafe.safety.safety_set import select_safety_set  # noqa: E402
from tfsafe.user_data import UserData, load_user_data  # noqa: E402

__all__ = [
    "__version__", "keras", "tf", "tfmot", "to_tf_keras",
    # data, models, files, errors
    "load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10", "load_dataset", "membership_split",
    "MembershipSplits", "membership_split_from_train_test", "data_kind",
    # a user's own data and its preprocessing
    "load_user_data", "UserData", "check_data_matches_model", "Preprocessing", "decide_preprocessing",
    "default_attack_eps", "InputRangeWarning",
    "small_cnn", "lenet", "mlp", "logits_model", "predict_logits", "accuracy", "copy_model",
    "load_model", "save_model", "TfsafeError", "InputError", "UnsupportedModelError", "MissingDependencyError",
    # compression mechanisms
    "PrunableSafe", "prune_safe", "DynamicSparsity", "LearnableBitQuant", "quantize_learnable", "FactorizedDense",
    "FactorizedConv2D", "LowRankDense", "LowRankConv2D", "factorize", "low_rank", "PolyReLUMask", "linearize",
    "DualBatchNormalization", "dual_batchnorm", "strip",
    # methods
    "SafeCompress", "safecompress", "ATMCModel", "atmc_compress", "self_compress", "rlnet",
    # the end-to-end run behind `tfsafe compress`
    "compress_model", "load_recipe",
    # safety tests
    "pgd_attack", "fgsm_attack", "adversarial_accuracy", "transfer_attack", "AdversarialModel", "EpsilonRamp",
    "CORRUPTIONS", "corrupt", "corruption_accuracy", "audit_membership", "MembershipAudit", "train_reference_models",
    "lira_audit", "select_safety_set", "evaluate_safety",
    # size and reports
    "model_size", "count_params", "count_nonzero", "sparsity", "compression_ratio", "relu_count", "SafetyReport",
]
