"""Does the exported file compute what the Keras model computes?

:func:`check_parity` runs the Keras model and an exported ``.tflite`` / ``.onnx`` file on the
same inputs and reports top-1 agreement, the largest and mean absolute difference of their
(dequantized) outputs, and the accuracy of each when labels are given.

The pass rule (:class:`ParityRule`, one default for ``to_tflite``, ``to_onnx``, ``tfsafe export``
and ``tfsafe compress``) judges what matters to a user rather than raw agreement: a model with
many near-ties (top-1 and runner-up within a rounding error) flips some of them under int8
noise without being any worse. So a file passes when (1) on the examples the Keras model is
*confident* about (top-1 probability ahead of the runner-up by at least ``confidence_margin``)
the top-1 agreement is at least ``min_agreement``, and (2) with labels, the accuracy drop is
within ``max_accuracy_drop`` or cannot be told from chance (below). A broken export fails both.

The accuracy rule counts examples, since the two models answer the *same* examples (paired
data): only the discordant ones matter, ``n_lost`` (Keras right, the file wrong) and
``n_gained`` (the reverse); the drop is ``(n_lost - n_gained) / n``. A file fails when the net
loss exceeds ``floor(max_accuracy_drop * n)`` examples **and** an exact one-sided sign test
(McNemar's exact test) on the discordant examples rejects "int8 rounding flips examples both
ways equally often": ``P(Binomial(n_lost + n_gained, 1/2) >= n_lost) < significance``. On a
large set any drop above the tolerance is significant, so the rule is the fraction rule; on a
small one, 1 lost example in 160 (1.25 points, p = 0.5) is chance and passes, while 8 lost of 160
(p = 0.004) fail. The failure message states the counts, the p-value and the largest net loss
that would have passed.

What is compared: the model's own outputs. A Keras model that ends with a softmax or sigmoid
is compared on **probabilities** (the exported file ends with the same activation); any other
model on **logits**; a one-unit (binary) head as two classes. ``ParityReport.compared`` says
which, so a logit difference of 0.3 is not mistaken for a probability difference.
"""

import dataclasses
import math

import numpy as np
from scipy import stats

from tfsafe.errors import TfsafeError
from tfsafe.models import class_scores, output_kind, predict_logits, predict_proba
from tfsafe.validation import (
    check_features,
    check_fraction,
    check_labels,
    check_model,
    model_input_shape,
    model_num_classes,
)

__all__ = ["ParityError", "ParityReport", "ParityRule", "check_parity", "DEFAULT_MIN_AGREEMENT",
           "DEFAULT_MAX_ACCURACY_DROP", "DEFAULT_CONFIDENCE_MARGIN", "DEFAULT_SIGNIFICANCE", "sign_test_p"]

DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_ACCURACY_DROP = 0.01
DEFAULT_CONFIDENCE_MARGIN = 0.1
DEFAULT_SIGNIFICANCE = 0.05


def sign_test_p(n_lost, n_gained):
    """One-sided exact sign test (McNemar's exact test) that the exported file is worse.

    Args:
        n_lost: examples the Keras model gets right and the exported file wrong.
        n_gained: examples the exported file gets right and the Keras model wrong.

    Returns:
        ``P(X >= n_lost)`` for ``X ~ Binomial(n_lost + n_gained, 1/2)``: how likely so many of
        the discordant examples go against the file if flips went either way equally often
        (1.0 without discordant examples).
    """
    m = int(n_lost) + int(n_gained)
    return 1.0 if m == 0 else float(stats.binom.sf(int(n_lost) - 1, m, 0.5))


class ParityError(TfsafeError):
    """The exported model disagrees with the Keras model more than allowed.

    Attributes:
        report: the :class:`ParityReport` that failed.
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class ParityReport:
    """Agreement between a Keras model and an exported file on the same inputs.

    Attributes:
        path: the exported file.
        format: ``"tflite"`` or ``"onnx"``.
        compared: ``"probabilities"`` (Keras model ends with softmax) or ``"logits"``.
        n: number of examples.
        top1_agreement: fraction of examples where both predict the same class.
        max_abs_diff, mean_abs_diff: over all output values (dequantized for int8 files).
        keras_accuracy, exported_accuracy: top-1 accuracy when labels were given, else None.
        confidence_margin: the margin (probability of top-1 minus runner-up, of the Keras
            model) above which an example counts as confident.
        n_confident: how many examples are confident.
        confident_agreement: top-1 agreement on the confident examples (None when there are none).
        accuracy_change: ``exported_accuracy - keras_accuracy`` (None without labels).
        n_lost, n_gained: examples the Keras model gets right and the file wrong, and the
            reverse (None without labels); ``accuracy_change == (n_gained - n_lost) / n``.
        rule, passed: the :class:`ParityRule` applied (as a dict) and its outcome, once judged.
    """

    path: str
    format: str
    compared: str
    n: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    keras_accuracy: float = None
    exported_accuracy: float = None
    confidence_margin: float = DEFAULT_CONFIDENCE_MARGIN
    n_confident: int = None
    confident_agreement: float = None
    accuracy_change: float = None
    n_lost: int = None
    n_gained: int = None
    rule: dict = None
    passed: bool = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def summary(self):
        text = f"top-1 agreement {self.top1_agreement:.4f} on {self.n} examples"
        if self.confident_agreement is not None:
            text += (f", {self.confident_agreement:.4f} on the {self.n_confident} confident ones "
                     f"(margin >= {self.confidence_margin:g})")
        if self.keras_accuracy is not None:
            text += (f", accuracy Keras {self.keras_accuracy:.4f} -> exported {self.exported_accuracy:.4f} "
                     f"({self.accuracy_change * 100:+.2f} points)")
        return text + f", {self.compared} max |diff| {self.max_abs_diff:.4g}, mean |diff| {self.mean_abs_diff:.4g}"


@dataclasses.dataclass
class ParityRule:
    """When does an exported file compute what the Keras model computes? (See the module doc.)

    Attributes:
        min_agreement: required top-1 agreement on the confident examples.
        max_accuracy_drop: largest drop of top-1 accuracy always allowed (a fraction; with
            labels): ``floor(max_accuracy_drop * n)`` examples net.
        confidence_margin: Keras top-1 minus runner-up probability that makes an example confident.
        significance: a larger net loss fails only when the exact one-sided sign test on the
            discordant examples (:func:`sign_test_p`) gives a p-value below this.
    """

    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    confidence_margin: float = DEFAULT_CONFIDENCE_MARGIN
    significance: float = DEFAULT_SIGNIFICANCE

    @classmethod
    def of(cls, min_agreement=None, max_accuracy_drop=None, confidence_margin=None, significance=None):
        """The default rule with the given (non-None) settings replaced, each checked to lie in [0, 1]."""
        values = {"min_agreement": min_agreement, "max_accuracy_drop": max_accuracy_drop,
                  "confidence_margin": confidence_margin, "significance": significance}
        given = {k: check_fraction(v, k, 0.0, 1.0, include_high=True) for k, v in values.items() if v is not None}
        return cls(**given)

    def to_dict(self):
        return dataclasses.asdict(self)

    def allowed_loss(self, n):
        """Net examples lost that always pass on ``n`` examples: ``floor(max_accuracy_drop * n)``."""
        return int(math.floor(self.max_accuracy_drop * n + 1e-9))

    def largest_passing_loss(self, n, n_gained):
        """The largest net loss (examples) that passes on ``n`` examples with ``n_gained`` gained."""
        k = np.arange(self.allowed_loss(n) + 1, max(n - 2 * n_gained, 0) + 1)
        significant = stats.binom.sf(n_gained + k - 1, 2 * n_gained + k, 0.5) < self.significance
        return int(k[np.argmax(significant)] - 1) if significant.any() else int(max(n - 2 * n_gained, 0))

    def failures(self, report):
        """The reasons ``report`` fails this rule (empty when it passes)."""
        reasons = []
        if report.confident_agreement is not None and report.confident_agreement < self.min_agreement:
            reasons.append(f"top-1 agreement on the {report.n_confident} confident examples is "
                           f"{report.confident_agreement:.2%} < --min_agreement {self.min_agreement:.2%}")
        if report.accuracy_change is None:
            return reasons
        drop = (f"accuracy drops by {-report.accuracy_change * 100:.2f} points ({report.keras_accuracy:.4f} -> "
                f"{report.exported_accuracy:.4f})")
        if report.n_lost is None:  # a report without the paired counts: the fraction rule alone
            if -report.accuracy_change > self.max_accuracy_drop + 1e-12:
                reasons.append(f"{drop} > --max_accuracy_drop {self.max_accuracy_drop * 100:.2f} points")
            return reasons
        net, allowed = report.n_lost - report.n_gained, self.allowed_loss(report.n)
        p = sign_test_p(report.n_lost, report.n_gained)
        if net > allowed and p < self.significance:
            reasons.append(
                f"{drop}: {net} of {report.n} examples net ({report.n_lost} lost, {report.n_gained} gained) > the "
                f"{allowed} that --max_accuracy_drop {self.max_accuracy_drop * 100:.2f} points allows, and not "
                f"chance (exact one-sided sign test on the {report.n_lost + report.n_gained} examples only one "
                f"model gets right: p = {p:.2g} < {self.significance:g}; with {report.n_gained} gained, at most "
                f"{self.largest_passing_loss(report.n, report.n_gained)} net lost would pass)")
        return reasons

    def judge(self, report, what):
        """Record the outcome in ``report``; raise :class:`ParityError` naming numbers, flags and options."""
        reasons = self.failures(report)
        report.rule, report.passed = self.to_dict(), not reasons
        if reasons:
            raise ParityError(
                f"{what} does not match the Keras model: {'; '.join(reasons)} ({report.summary()}). No file was "
                "written. Options: another mode (dynamic or float16 keep float activations), quantization-aware "
                "training, or, if the loss is acceptable, relax --min_agreement / --max_accuracy_drop "
                "(to_tflite(min_agreement=, max_accuracy_drop=); recipe export.min_agreement / "
                "export.max_accuracy_drop).",
                report=report)
        return report


def keras_outputs(model, x):
    """Outputs the exported file is compared against: probabilities or logits, and which.

    A model ending in a softmax or sigmoid is compared on probabilities, any other on logits;
    a one-unit head gives two columns (``[1 - p, p]`` or ``[0, z]``).
    """
    if output_kind(model) == "probabilities":
        return predict_proba(model, x), "probabilities"
    return predict_logits(model, x), "logits"


def _probabilities(outputs, compared):
    if compared == "probabilities":
        return outputs
    z = outputs - outputs.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_parity(keras_model, exported_path, x, y=None, batch_size=256, exported=None,
                 confidence_margin=DEFAULT_CONFIDENCE_MARGIN):
    """Compare ``keras_model`` with an exported ``.tflite`` or ``.onnx`` file on ``x``.

    Args:
        keras_model: the model that was exported (wrapped models are run as they are, in
            inference mode).
        exported_path: path of the ``.tflite`` or ``.onnx`` file.
        x: float inputs, shaped like the model's input.
        y: optional integer labels (or one-hot rows) for the accuracy of each model.
        batch_size: examples per call of the exported model.
        exported: an already opened :class:`~tflite_export.runtime.TFLiteModel` /
            ``ONNXModel`` for ``exported_path`` (optional).
        confidence_margin: an example is confident when the Keras model's top-1 probability
            exceeds the runner-up's by at least this much.

    Returns:
        A :class:`ParityReport`.

    Example:
        >>> report = check_parity(model, "model_int8.tflite", x_test, y_test)  # doctest: +SKIP
        >>> report.top1_agreement >= 0.99  # doctest: +SKIP
        True
    """
    from tflite_export.runtime import is_tflite_file, load_exported

    keras_model = check_model(keras_model, "keras_model")
    x = check_features(x, "x", model_input_shape(keras_model))
    if y is not None:
        y = check_labels(y, model_num_classes(keras_model), "y", n=len(x))
    runner = exported if exported is not None else load_exported(exported_path)
    reference, compared = keras_outputs(keras_model, x)
    outputs = runner.predict(x, batch_size=batch_size)
    if outputs.ndim == 2 and outputs.shape[1] == 1:  # a one-unit head, exported from this model
        outputs = class_scores(outputs, compared)
    if outputs.shape != reference.shape:
        raise ParityError(
            f"'{exported_path}' outputs shape {outputs.shape} but the Keras model {reference.shape}; "
            "the file was exported from a different model."
        )
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    pred_exported, pred_keras = outputs.argmax(axis=1), reference.argmax(axis=1)
    agree = pred_exported == pred_keras
    probs = np.sort(_probabilities(reference.astype(np.float64), compared), axis=1)
    margin = probs[:, -1] - probs[:, -2] if probs.shape[1] > 1 else np.ones(len(probs))
    confident = margin >= confidence_margin
    keras_acc = None if y is None else float(np.mean(pred_keras == y))
    exported_acc = None if y is None else float(np.mean(pred_exported == y))
    return ParityReport(
        path=str(exported_path),
        format="tflite" if is_tflite_file(exported_path) else "onnx",
        compared=compared,
        n=int(len(x)),
        top1_agreement=float(np.mean(agree)),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        keras_accuracy=keras_acc,
        exported_accuracy=exported_acc,
        confidence_margin=float(confidence_margin),
        n_confident=int(confident.sum()),
        confident_agreement=float(np.mean(agree[confident])) if confident.any() else None,
        accuracy_change=None if y is None else exported_acc - keras_acc,
        n_lost=None if y is None else int(np.sum((pred_keras == y) & (pred_exported != y))),
        n_gained=None if y is None else int(np.sum((pred_keras != y) & (pred_exported == y))),
    )
