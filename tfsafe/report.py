"""SafetyReport: one comparison of models (dense, unsafe baseline, compressed, deployed file),
written as versioned JSON, readable Markdown and a self-contained HTML page with plots.

A report holds one entry per model. Each entry is plain data: accuracy, the size metrics of
:func:`tfsafe.metrics.model_size`, the membership audit's worst case, robustness results and
file sizes, whichever were measured. Missing measurements are shown as "-".

The page opens with a verdict per non-dense model against the dense one and the unsafe
baseline (:func:`tfsafe.report_verdict.comparisons`): how much smaller, the accuracy change,
and for each threat (adversarial, corruption, membership) better / same / worse, "worse"
flagged. A glossary defines every column.

Example:
    >>> report = SafetyReport("demo", dataset="digits")
    >>> _ = report.add_model("dense", role="dense", accuracy=0.97, size={"params": 1000})
    >>> "dense" in report.to_markdown()
    True
"""

import datetime
import os

from tfsafe import report_plots as plots
from tfsafe.io import atomic_write_json, atomic_write_text, to_jsonable
from tfsafe.report_html import esc, figures_html, html_table, md_table, meta_html, meta_markdown, page
from tfsafe.report_verdict import TOLERANCE, attack_label, comparisons, size_text, worst_by_metric

__all__ = ["SCHEMA_VERSION", "SafetyReport", "GLOSSARY"]

SCHEMA_VERSION = "1.1"

# (column title, path into an entry, format)
_COLUMNS = [
    ("model", ("name",), "{}"),
    ("role", ("role",), "{}"),
    ("test acc", ("accuracy",), "{:.4f}"),
    ("agreement with the dense model", ("agreement_with_dense",), "{:.4f}"),
    ("params", ("size", "params"), "{:,}"),
    ("non-zeros", ("size", "nonzeros"), "{:,}"),
    ("sparsity", ("size", "sparsity"), "{:.1%}"),
    ("avg bits", ("size", "average_bits"), "{:.1f}"),
    ("ideal bytes", ("size", "ideal_bytes"), "{:,.0f}"),
    ("ReLUs", ("size", "relu_count"), "{:,}"),
    (".tflite bytes", ("file", "bytes"), "{:,}"),
    ("gzip bytes", ("file", "gzip_bytes"), "{:,}"),
    (".tflite / ideal", ("file", "tflite_over_ideal"), "{:.2f}"),
    ("MIA AUC (worst)", ("membership", "worst", "auc"), "{:.3f}"),
    ("MIA advantage", ("membership", "worst", "advantage"), "{:.3f}"),
    ("TPR@1%FPR", ("membership", "worst", "tpr_at_1pct_fpr"), "{:.3f}"),
    ("PGD acc", ("robustness", "pgd_accuracy"), "{:.4f}"),
    ("corruption acc", ("robustness", "corruption_mean_accuracy"), "{:.4f}"),
    ("epsilon", ("method_info", "epsilon"), "{:.2f}"),
    ("delta", ("method_info", "delta"), "{:.1e}"),
]
_WORSE_CLASS = ' class="worse"'
# Membership columns name the attack that produced each worst-case value.
_MEMBERSHIP_METRIC = {"MIA AUC (worst)": "auc", "MIA advantage": "advantage", "TPR@1%FPR": "tpr_at_1pct_fpr"}

GLOSSARY = {
    "model": "The model's name in this run.",
    "role": "dense = the uncompressed model; unsafe baseline = compressed without any safety objective "
            "(TF-MOT pruning); compressed = the method under test; deployed = the exported .tflite file itself.",
    "test acc": "Top-1 accuracy on the held-out test split (never used for training or selection).",
    "agreement with the dense model": "Fraction of test inputs on which the model's top-1 class is the dense "
                                      "model's: a compressed model that learned something else shows here.",
    "params": "Number of weights the model stores (all layers, biases included).",
    "non-zeros": "Weights that are not exactly zero after pruning masks are applied.",
    "sparsity": "Fraction of prunable weights that are zero.",
    "avg bits": "Average storage bits per non-zero weight (32 for float, fewer after quantization).",
    "ideal bytes": "non-zeros x bits / 8 plus codebooks: the size an ideal sparse, quantized encoding needs.",
    "ReLUs": "ReLU units evaluated per example (what private inference pays for).",
    ".tflite bytes": "Size of the deployed .tflite file on disk.",
    "gzip bytes": "Size of the .tflite file after gzip -9 (what an app download costs).",
    "MIA AUC (worst)": "Area under the ROC curve of the strongest membership-inference attack (in brackets): "
                       "0.5 = the attacker guesses, 1.0 = it always tells members from non-members. Lower is safer.",
    "MIA advantage": "Largest TPR - FPR of any attack (in brackets) at any threshold. Lower is safer.",
    "TPR@1%FPR": "Fraction of members an attack (in brackets) identifies while wrongly accusing 1% of non-members. "
                 "Compare with 0.01 (guessing). Lower is safer.",
    "PGD acc": "Accuracy under a white-box PGD attack at the largest eps (worst case over CE and margin losses; "
               "transfer attacks for a .tflite). Higher is safer.",
    "corruption acc": "Mean accuracy over natural corruptions (noise, blur, contrast...) and severities. Higher is "
                      "safer.",
    "epsilon": "The (epsilon, delta) differential-privacy guarantee of a DP-SGD run (RDP accountant): no single "
               "training example changes the odds of any outcome by more than e^epsilon, except with probability "
               "delta. Lower is more private; see Method notes for what it covers.",
    "delta": "The delta of the epsilon guarantee (typically below 1 / the number of training examples).",
    "smaller": "How many times smaller than the reference (basis in brackets: ideal bytes or the .tflite file); "
               "'larger: ...' when it is larger.",
    "accuracy change": "Test accuracy minus the reference's, in percentage points.",
    "adversarial / corruption / membership": f"better / same / worse than the reference on PGD accuracy, corruption "
                                             f"accuracy and worst MIA AUC; accuracy differences within {TOLERANCE} "
                                             "and AUC differences within one standard error of the reference's "
                                             "AUC at its audit set sizes (Hanley-McNeil; 0.01 when the sizes are "
                                             "unknown) count as same. worse is flagged.",
}


def _get(entry, path):
    value = entry
    for key in path:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            return None
        value = value[key]
    return value


def _cell(entry, title, path, fmt):
    if path[0] == "membership" and entry.get("membership_not_meaningful"):
        return "not meaningful (see Run)"
    value = _get(entry, path)
    if value is None:
        return "-"
    text = fmt.format(value)
    metric = _MEMBERSHIP_METRIC.get(title)
    if metric:
        attack = worst_by_metric(entry.get("membership")).get(metric, (None, None))[1]
        if attack:
            text += f" ({attack_label(attack)})"
    return text


def _threat_text(threat):
    text = f"{threat['verdict']} ({threat['reference']:.3f} -> {threat['value']:.3f})"
    return f"WORSE ⚠ {text[6:]}" if threat["verdict"] == "worse" else text


class SafetyReport:
    """A side-by-side safety and size comparison of models.

    Args:
        title: headline of the report.
        **meta: anything that describes the run (dataset, split sizes, attacks, seed...); dict
            values are rendered as tables.
    """

    def __init__(self, title, **meta):
        self.title = title
        self.meta = dict(meta)
        self.models = []

    @classmethod
    def from_dict(cls, data):
        """A report from :meth:`to_dict` output (e.g. a ``report.json`` read back)."""
        report = cls(data["title"], **(data.get("meta") or {}))
        report.models = [dict(m) for m in data.get("models") or []]
        return report

    def add_model(self, name, role, **results):
        """Add one model's results (``accuracy=``, ``size=``, ``membership=``, ``robustness=``, ``file=``...).

        ``membership`` may be a full audit dict (with per-attack ROC curves, for the plots);
        ``corruptions`` a :func:`tfsafe.safety.corruptions.corruption_accuracy` result.
        """
        entry = {"name": name, "role": role}
        entry.update(to_jsonable(results))
        self.models.append(entry)
        return entry

    def add_evaluation(self, name, role, evaluation, **extra):
        """Add a model from an :func:`tfsafe.safety.evaluate.evaluate_safety` result."""
        tests = evaluation.get("tests") or {}
        membership = tests.get("membership") if "worst" in (tests.get("membership") or {}) else None
        corruptions = tests.get("corruptions") if "table" in (tests.get("corruptions") or {}) else None
        return self.add_model(name, role, accuracy=evaluation.get("accuracy"),
                              robustness=evaluation.get("robustness"),
                              membership=membership or evaluation.get("membership"),
                              corruptions=corruptions, score=evaluation.get("score"), **extra)

    def verdicts(self):
        """Each non-dense model against the dense model and the unsafe baseline (see :mod:`tfsafe.report_verdict`)."""
        return comparisons(self.models)

    def to_dict(self):
        return {
            "schema_version": SCHEMA_VERSION,
            "title": self.title,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "meta": to_jsonable(self.meta),
            "verdicts": self.verdicts(),
            "models": self.models,
        }

    def _columns(self):
        return [c for c in _COLUMNS if any(_get(m, c[1]) is not None or (c[1][0] == "membership" and m.get(
            "membership_not_meaningful")) for m in self.models)]

    def _rows(self):
        columns = self._columns()
        return [c[0] for c in columns], [[_cell(m, *c) for c in columns] for m in self.models]

    def _verdict_rows(self):
        header = ["model", "against", "smaller", "accuracy change", "adversarial", "corruption", "membership"]
        rows, worse = [], []
        for v in self.verdicts():
            smaller = size_text(v)
            acc = "-" if v["accuracy_change"] is None else f"{v['accuracy_change'] * 100:+.1f} points"
            threats = ["-" if t not in v["threats"] else _threat_text(v["threats"][t])
                       for t in ("adversarial", "corruption", "membership")]
            rows.append([v["model"], f"{v['against']} ({v['against_role']})", smaller, acc, *threats])
            worse.append(bool(v["worse"]))
        return header, rows, worse

    def _verdict_summary(self):
        flagged = [f"{v['model']} is easier to attack than {v['against']} ({', '.join(v['worse'])})"
                   for v in self.verdicts() if v["worse"]]
        if flagged:
            return "⚠ " + "; ".join(flagged) + "."
        if self.verdicts():
            return "No compressed model is easier to attack than its reference on the threats measured."
        return None

    def method_notes(self):
        """One line per model whose method says something the table cannot: which state the
        selection kept (an early state is said, not hidden; see MIA-SafeCompress's
        ``selection["note"]``) and what a DP-SGD run's epsilon covers.

        Returns:
            ``[(model name, note, flagged)]``; ``flagged`` marks an early state.
        """
        notes = []
        for m in self.models:
            selection, info = m.get("selection") or {}, m.get("method_info") or {}
            if selection.get("note"):
                text = f"selection {selection['note']}"
                if selection.get("early_state"):
                    text += (": its leakage and accuracy are those of a shorter run; compare with TF-MOT pruning "
                             f"stopped at the same step (baseline max_steps={selection.get('kept_step')})")
                notes.append((m["name"], text, bool(selection.get("early_state"))))
            if "epsilon" in info:
                privacy = info.get("privacy") or {}
                if info["epsilon"] is None:
                    text = "DP-SGD without noise: no differential-privacy guarantee"
                else:
                    text = f"DP-SGD: epsilon = {info['epsilon']:.2f} at delta = {info['delta']:.1e}"
                    details = [f"{k.replace('_', ' ')} {privacy[k]:.4g}" for k in
                               ("noise_multiplier", "l2_norm_clip", "sampling_rate") if privacy.get(k) is not None]
                    if info.get("steps") is not None:
                        details.append(f"{info['steps']} steps")
                    text += f" ({', '.join(details)})" if details else ""
                    text += f"; {privacy['guarantee']}" if privacy.get("guarantee") else ""
                    text += f"; accountant: {privacy['accountant']}" if privacy.get("accountant") else ""
                notes.append((m["name"], text, False))
        return notes

    def to_markdown(self):
        """The report as Markdown: verdict, the table of every measured column, the run, a glossary."""
        lines = [f"# {self.title}", ""]
        header, rows, _ = self._verdict_rows()
        if rows:
            lines += ["## Verdict", "", self._verdict_summary(), "", md_table(header, rows), ""]
        lines += ["## Results", ""]
        titles, cells = self._rows()
        lines += [md_table(titles, cells), ""]
        notes = self.method_notes()
        if notes:
            lines += ["## Method notes", ""]
            lines += [f"- **{name}**: {'⚠ ' if flagged else ''}{text}" for name, text, flagged in notes]
            lines.append("")
        if self.meta:
            lines += ["## Run", "", meta_markdown(self.meta), ""]
        lines += ["## Glossary", ""]
        lines += [f"- **{k}**: {v}" for k, v in self._glossary().items()]
        lines.append("")
        return "\n".join(lines)

    def _glossary(self):
        shown = set(self._rows()[0])
        keep = {k: v for k, v in GLOSSARY.items() if k in shown}
        if self.verdicts():
            keep.update({k: GLOSSARY[k] for k in ("smaller", "accuracy change",
                                                  "adversarial / corruption / membership")})
        return keep

    def figures(self):
        """``[(title, png_bytes)]`` for every figure the measured data supports."""
        figures = [
            ("Size, accuracy and membership risk", plots.tradeoff(self.models)),
            ("Membership inference ROC (log scale)", plots.membership_roc(self.models)),
            ("TPR at 1% FPR vs test accuracy", plots.tpr_vs_accuracy(self.models)),
            ("Robust accuracy vs eps", plots.robustness_curve(self.models)),
        ]
        figures += [(f"Accuracy under natural corruptions: {name}", png)
                    for name, png in plots.corruption_heatmaps(self.models)]
        figures += [(f"tensorflow-privacy ROC: {m['name']}", plots.privacy_roc(m)) for m in self.models]
        return [(title, png) for title, png in figures if png]

    def to_html(self):
        """A self-contained HTML page: verdict, table, run description, figures and glossary."""
        body = []
        header, rows, worse = self._verdict_rows()
        if rows:
            body.append(f"<section id=\"verdict\"><h2>Verdict</h2><p class=\"verdict\">"
                        f"{esc(self._verdict_summary())}</p>"
                        + html_table(header, rows, "verdicts", ["worse" if w else None for w in worse])
                        + "</section>")
        titles, cells = self._rows()
        body.append("<h2>Results</h2>" + html_table(titles, cells, "results",
                                                    [m["role"].replace(" ", "-") for m in self.models]))
        notes = self.method_notes()
        if notes:
            body.append("<section id=\"method-notes\"><h2>Method notes</h2><ul>" + "".join(
                f"<li{_WORSE_CLASS if flagged else ''}><b>{esc(name)}</b>: {esc(text)}</li>"
                for name, text, flagged in notes) + "</ul></section>")
        if self.meta:
            body.append(f"<h2>Run</h2>{meta_html(self.meta)}")
        body.append(f"<section id=\"figures\">{figures_html(self.figures())}</section>")
        body.append("<h2>Glossary</h2><dl class=\"glossary\">" + "".join(
            f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in self._glossary().items()) + "</dl>")
        return page(self.title, "\n".join(body), f"tfsafe report schema {SCHEMA_VERSION}")

    def save(self, out_dir, stem="report", html_page=True):
        """Write ``<stem>.json``, ``<stem>.md`` (and ``<stem>.html``) into ``out_dir`` atomically.

        Returns:
            The list of written paths.
        """
        paths = [os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")]
        atomic_write_json(paths[0], self.to_dict())
        atomic_write_text(paths[1], self.to_markdown())
        if html_page:
            paths.append(os.path.join(out_dir, f"{stem}.html"))
            atomic_write_text(paths[2], self.to_html())
        return paths
