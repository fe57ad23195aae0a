"""What a compressed model must survive: one module per threat.

- :mod:`~tfsafe.safety.adversarial`: FGSM, PGD (Linf / L2, restarts), BPDA, transfer attacks;
  :mod:`~tfsafe.safety.adversarial_training`: Madry / TRADES training in ``train_step``.
- :mod:`~tfsafe.safety.corruptions`: natural corruptions x 5 severities, mean accuracy, mCE.
- :mod:`~tfsafe.safety.membership`: tensorflow-privacy audits; :mod:`~tfsafe.safety.lira`:
  sharded reference models and LiRA (online / offline); :mod:`~tfsafe.safety.rmia`: RMIA;
  :mod:`~tfsafe.safety.reference_attacks`: both as the headline audit; :mod:`~tfsafe.safety.roc`:
  TPR at low FPR and what an audit set resolves; :mod:`~tfsafe.safety.simulated_attacker`:
  the attacker MIA-SafeCompress selects against.
- :mod:`~tfsafe.safety.safety_set`: Grad-CAM + margin + k-means safety sets.
- :mod:`~tfsafe.safety.tests` and :mod:`~tfsafe.safety.evaluate`: the pluggable safety tests
  and :func:`evaluate_safety`, which runs them on a Keras model or a ``.tflite`` file.
"""

from tfsafe.safety.adversarial import (
    AdversarialModel,
    EpsilonRamp,
    adversarial_accuracy,
    fgsm_attack,
    has_bpda_layers,
    pgd_attack,
    pgd_perturb,
    register_bpda_surrogate,
    straight_through,
    transfer_attack,
    zero_gradient_fraction,
)
from tfsafe.safety.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_accuracy
from tfsafe.safety.evaluate import TEST_NAMES, default_eps, default_tests, evaluate_safety
from tfsafe.safety.lira import lira_audit, train_reference_models
from tfsafe.safety.membership import (
    ATTACKS,
    DEFAULT_ATTACKS,
    FAST_ATTACKS,
    MembershipAudit,
    audit_membership,
    audit_outputs,
)
from tfsafe.safety.reference_attacks import audit_pool, reference_audit
from tfsafe.safety.rmia import rmia_audit
from tfsafe.safety.safety_set import safety_scores, select_safety_set
from tfsafe.safety.simulated_attacker import SimulatedAttacker, nasr_attacker
from tfsafe.safety.tests import (
    CleanTest,
    CorruptionTest,
    FGSMTest,
    MembershipTest,
    PGDTest,
    SafetyData,
    SafetySetTest,
    SafetyTest,
    selection_score,
)
from tfsafe.safety.tflite_model import as_target, predict_labels, predict_outputs

__all__ = [
    # attacks and adversarial training
    "pgd_perturb", "pgd_attack", "fgsm_attack", "adversarial_accuracy", "transfer_attack", "register_bpda_surrogate",
    "has_bpda_layers", "straight_through", "zero_gradient_fraction", "AdversarialModel", "EpsilonRamp",
    # natural corruptions
    "CORRUPTIONS", "SEVERITIES", "corrupt", "corruption_accuracy",
    # membership inference
    "ATTACKS", "DEFAULT_ATTACKS", "FAST_ATTACKS", "MembershipAudit", "audit_membership", "audit_outputs",
    "train_reference_models", "lira_audit", "rmia_audit", "reference_audit", "audit_pool", "SimulatedAttacker",
    "nasr_attacker",
    # safety sets
    "select_safety_set", "safety_scores",
    # pluggable tests and one-call evaluation
    "SafetyData", "SafetyTest", "CleanTest", "PGDTest", "FGSMTest", "CorruptionTest", "MembershipTest",
    "SafetySetTest", "selection_score", "evaluate_safety", "default_eps", "default_tests", "TEST_NAMES",
    # Keras models, callables and .tflite files as targets
    "as_target", "predict_outputs", "predict_labels",
]
