"""SafetyReport: one comparison of models (dense, unsafe baseline, compressed, deployed file),
written as versioned JSON, readable Markdown and a self-contained HTML page with plots.

A report holds one entry per model. Each entry is plain data: accuracy, the size metrics of
:func:`tfsafe.metrics.model_size`, the membership audit's worst case, robustness results and
file sizes, whichever were measured. Missing measurements are shown as "-".

Example:
    >>> report = SafetyReport("demo", dataset="digits")
    >>> _ = report.add_model("dense", role="dense", accuracy=0.97, size={"params": 1000})
    >>> "dense" in report.to_markdown()
    True
"""

import base64
import datetime
import html
import os

from tfsafe.io import atomic_write_json, atomic_write_text, to_jsonable

__all__ = ["SCHEMA_VERSION", "SafetyReport"]

SCHEMA_VERSION = "1.0"

# (column title, path into an entry, format)
_COLUMNS = [
    ("model", ("name",), "{}"),
    ("role", ("role",), "{}"),
    ("test acc", ("accuracy",), "{:.4f}"),
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
]


def _get(entry, path):
    value = entry
    for key in path:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            return None
        value = value[key]
    return value


class SafetyReport:
    """A side-by-side safety and size comparison of models.

    Args:
        title: headline of the report.
        **meta: anything that describes the run (dataset, split sizes, attacks, seed...).
    """

    def __init__(self, title, **meta):
        self.title = title
        self.meta = dict(meta)
        self.models = []

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

    def to_dict(self):
        return {
            "schema_version": SCHEMA_VERSION,
            "title": self.title,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "meta": to_jsonable(self.meta),
            "models": self.models,
        }

    def _columns(self):
        return [c for c in _COLUMNS if any(_get(m, c[1]) is not None for m in self.models)]

    def to_markdown(self):
        """The report as Markdown: a table of every measured column plus the run description."""
        columns = self._columns()
        lines = [f"# {self.title}", ""]
        if self.meta:
            for key, value in self.meta.items():
                lines.append(f"- **{key}**: {value}")
            lines.append("")
        lines.append("| " + " | ".join(c[0] for c in columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        for entry in self.models:
            cells = []
            for _, path, fmt in columns:
                value = _get(entry, path)
                cells.append("-" if value is None else fmt.format(value))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        return "\n".join(lines)

    def figures(self):
        """``[(title, png_bytes)]`` for every figure the measured data supports."""
        from tfsafe import report_plots as plots  # noqa: PLC0415

        figures = [
            ("Size, accuracy and membership risk", plots.tradeoff(self.models)),
            ("Membership inference ROC (log scale)", plots.membership_roc(self.models)),
            ("Robust accuracy vs eps", plots.robustness_curve(self.models)),
            ("Accuracy under natural corruptions", plots.corruption_heatmap(self.models)),
        ]
        figures += [(f"tensorflow-privacy ROC: {m['name']}", plots.privacy_roc(m)) for m in self.models]
        return [(title, png) for title, png in figures if png]

    def to_html(self):
        """A self-contained HTML page: the table, the run description and the figures inline."""
        columns = self._columns()
        esc = html.escape
        head = "".join(f"<th>{esc(c[0])}</th>" for c in columns)
        body = []
        for entry in self.models:
            cells = []
            for _, path, fmt in columns:
                value = _get(entry, path)
                cells.append("<td>-</td>" if value is None else f"<td>{esc(fmt.format(value))}</td>")
            body.append(f"<tr class=\"{esc(entry['role'].replace(' ', '-'))}\">{''.join(cells)}</tr>")
        meta = "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in self.meta.items())
        figures = "".join(
            f"<figure><img alt=\"{esc(title)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"
            f"<figcaption>{esc(title)}</figcaption></figure>"
            for title, png in self.figures()
        )
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(self.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: right; }}
th {{ background: #f0f0f0; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
tr.unsafe-baseline {{ background: #fff4f0; }} tr.compressed {{ background: #f0fff4; }}
figure {{ display: inline-block; margin: 1rem; vertical-align: top; }} img {{ max-width: 640px; }}
</style></head>
<body><h1>{esc(self.title)}</h1><ul>{meta}</ul>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
<section id="figures">{figures}</section>
<footer><small>tfsafe report schema {SCHEMA_VERSION}</small></footer></body></html>
"""

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
