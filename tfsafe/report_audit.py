"""AuditReport: what ``tfsafe audit`` writes, in the compress report's family (JSON + Markdown +
self-contained HTML): a verdict in plain words, train / unseen accuracy and the gap, the audit
set sizes and the smallest false-positive rate they resolve, a per-attack table, the worst case
of each metric with the attack that produced it, and every attack's ROC on log-log axes.

Example:
    >>> audit = {"attacks": [{"attack": "threshold", "auc": 0.62, "advantage": 0.2, "tpr_at_1pct_fpr": 0.04,
    ...                       "tpr_at_01pct_fpr": 0.0}], "n_members": 500, "n_nonmembers": 500}
    >>> report = AuditReport("model.keras", audit, {"members": 1.0, "nonmembers": 0.9})
    >>> report.level
    'high'
"""

import datetime
import os

from tfsafe import report_plots as plots
from tfsafe.io import atomic_write_json, atomic_write_text, to_jsonable
from tfsafe.report_html import esc, figures_html, html_table, md_table, meta_html, meta_markdown, page
from tfsafe.report_verdict import attack_label, membership_verdict, worst_by_metric

__all__ = ["AUDIT_SCHEMA", "AuditReport", "AUDIT_GLOSSARY"]

AUDIT_SCHEMA = "tfsafe.audit/1"
_METRICS = [("auc", "AUC"), ("advantage", "advantage"), ("tpr_at_1pct_fpr", "TPR@1%FPR"),
            ("tpr_at_01pct_fpr", "TPR@0.1%FPR")]

AUDIT_GLOSSARY = {
    "members": "Examples the model was trained on (the audit's positives).",
    "non-members": "Examples the model never saw (negatives); their number sets the smallest false-positive rate "
                   "the audit can resolve: 1 / non-members.",
    "generalization gap": "Accuracy on members minus accuracy on non-members; a wide gap means memorization, the "
                          "usual cause of membership leakage.",
    "AUC": "Area under the attack's ROC curve: 0.5 = guessing, 1.0 = always right.",
    "advantage": "Largest TPR - FPR at any threshold.",
    "TPR@1%FPR": "Fraction of members the attack identifies while wrongly accusing 1% of non-members; guessing "
                 "gets 0.01. Shown as '-' in the verdict when the set cannot resolve 1%.",
    "TPR@0.1%FPR": "The same at 0.1% (needs at least 1,000 non-members to mean anything).",
    "worst case": "The maximum of each metric over the attacks, each with the attack that reached it.",
}


class AuditReport:
    """A membership audit of one model as a report.

    Args:
        model_name: the audited file or model's name.
        membership: a :meth:`tfsafe.safety.membership.MembershipAudit.to_dict` dict.
        accuracy: ``{"members": acc, "nonmembers": acc}`` top-1 accuracies, or None.
        **meta: anything else that describes the run (attacks, reference models...).

    Attributes:
        level, verdict: :func:`tfsafe.report_verdict.membership_verdict` of the audit.
    """

    def __init__(self, model_name, membership, accuracy=None, **meta):
        self.model_name = model_name
        self.membership = to_jsonable(membership)
        self.accuracy = dict(accuracy) if accuracy else None
        if self.accuracy and None not in (self.accuracy.get("members"), self.accuracy.get("nonmembers")):
            self.accuracy["gap"] = self.accuracy["members"] - self.accuracy["nonmembers"]
        self.meta = dict(meta)
        self.level, self.verdict = membership_verdict(self.membership, self.accuracy)

    @property
    def title(self):
        return f"tfsafe audit: membership inference on {self.model_name}"

    def worst(self):
        """``{metric: (value, attack)}``: each worst-case metric with the attack that produced it."""
        return worst_by_metric(self.membership)

    def sizes(self):
        n_non = self.membership.get("n_nonmembers") or 0
        return {"members": self.membership.get("n_members"), "non-members": n_non,
                "smallest resolvable FPR": 1.0 / n_non if n_non else None}

    def to_dict(self):
        """JSON: the audit dict's own keys (``worst``, ``attacks``...) plus the report's."""
        out = dict(self.membership)
        out.update(schema=AUDIT_SCHEMA, title=self.title, model=self.model_name,
                   created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   accuracy=self.accuracy, risk=self.level, verdict=self.verdict,
                   worst_by_metric={m: {"value": v, "attack": a} for m, (v, a) in self.worst().items()},
                   meta=to_jsonable(self.meta))
        return out

    def _attack_rows(self):
        rows = []
        for a in self.membership.get("attacks") or []:
            rows.append([attack_label(a["attack"])] + [
                "-" if a.get(m) is None else f"{a[m]:.3f}" for m, _ in _METRICS])
        return ["attack"] + [t for _, t in _METRICS], rows

    def _worst_rows(self):
        return ["metric", "worst case", "attack"], [
            [title, f"{value:.3f}", attack_label(attack) if attack else "-"]
            for metric, title in _METRICS for value, attack in [self.worst().get(metric, (None, None))]
            if value is not None]

    def _accuracy_rows(self):
        if not self.accuracy:
            return None
        acc = self.accuracy
        return ["members (train)", "non-members (unseen)", "generalization gap"], [[
            f"{acc['members']:.4f}", f"{acc['nonmembers']:.4f}",
            "-" if acc.get("gap") is None else f"{acc['gap'] * 100:+.1f} points"]]

    def _size_rows(self):
        s = self.sizes()
        fpr = "-" if s["smallest resolvable FPR"] is None else f"{s['smallest resolvable FPR']:.2%}"
        return ["members", "non-members", "smallest resolvable FPR"], [[s["members"], s["non-members"], fpr]]

    def to_text(self):
        """Console lines: one per attack, the worst case per metric with its attack, the verdict."""
        lines = []
        for a in self.membership.get("attacks") or []:
            lines.append(f"{attack_label(a['attack']):>20}  AUC {a['auc']:.3f}  advantage {a['advantage']:.3f}  "
                         f"TPR@1%FPR {a['tpr_at_1pct_fpr']:.3f}")
        worst = "  ".join(f"{title} {value:.3f} ({attack_label(attack) if attack else '-'})"
                          for metric, title in _METRICS[:3]
                          for value, attack in [self.worst().get(metric, (None, None))] if value is not None)
        lines.append(f"{'worst case':>20}  {worst}")
        lines.append("")
        lines.append(self.verdict)
        return "\n".join(lines)

    def to_markdown(self):
        lines = [f"# {self.title}", "", "## Verdict", "", self.verdict, ""]
        if self._accuracy_rows():
            lines += ["## Accuracy", "", md_table(*self._accuracy_rows()), ""]
        lines += ["## Audit sets", "", md_table(*self._size_rows()), "",
                  "## Attacks", "", md_table(*self._attack_rows()), "",
                  "## Worst case (each metric with the attack that reached it)", "", md_table(*self._worst_rows()), ""]
        if self.meta:
            lines += ["## Run", "", meta_markdown(self.meta), ""]
        lines += ["## Glossary", ""] + [f"- **{k}**: {v}" for k, v in AUDIT_GLOSSARY.items()] + [""]
        return "\n".join(lines)

    def figures(self):
        png = plots.attack_rocs(self.membership, f"{self.model_name}: every attack's ROC (log-log)")
        return [("Membership inference ROC per attack (log scale)", png)] if png else []

    def to_html(self):
        body = [f"<section id=\"verdict\"><h2>Verdict</h2><p class=\"verdict {esc(self.level)}\">"
                f"{esc(self.verdict)}</p></section>"]
        if self._accuracy_rows():
            body.append("<h2>Accuracy</h2>" + html_table(*self._accuracy_rows(), table_id="accuracy"))
        body.append("<h2>Audit sets</h2>" + html_table(*self._size_rows(), table_id="sizes"))
        body.append("<h2>Attacks</h2>" + html_table(*self._attack_rows(), table_id="attacks"))
        body.append("<h2>Worst case</h2>" + html_table(*self._worst_rows(), table_id="worst"))
        if self.meta:
            body.append("<h2>Run</h2>" + meta_html(self.meta))
        body.append(f"<section id=\"figures\">{figures_html(self.figures())}</section>")
        body.append("<h2>Glossary</h2><dl class=\"glossary\">" + "".join(
            f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in AUDIT_GLOSSARY.items()) + "</dl>")
        return page(self.title, "\n".join(body), f"tfsafe audit report schema {AUDIT_SCHEMA}")

    def save(self, out_dir, stem="audit"):
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` atomically; returns the paths.

        The stem is ``audit`` so that auditing into a ``tfsafe compress`` run folder leaves its
        ``report.*`` alone.
        """
        paths = [os.path.join(out_dir, f"{stem}.{ext}") for ext in ("json", "md", "html")]
        atomic_write_json(paths[0], self.to_dict())
        atomic_write_text(paths[1], self.to_markdown())
        atomic_write_text(paths[2], self.to_html())
        return paths
