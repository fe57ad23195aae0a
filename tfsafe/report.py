"""SafetyReport: one comparison of models (dense, unsafe baseline, compressed, deployed file),
written as versioned JSON and readable Markdown.

A report holds one entry per model. Each entry is plain data: accuracy, the size metrics of
:func:`tfsafe.metrics.model_size`, the membership audit's worst case, robustness results and
file sizes, whichever were measured. Missing measurements are shown as "-".

Example:
    >>> report = SafetyReport("demo", dataset="digits")
    >>> report.add_model("dense", role="dense", accuracy=0.97, size={"params": 1000})
    >>> "dense" in report.to_markdown()
    True
"""

import datetime
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
        """Add one model's results (``accuracy=``, ``size=``, ``membership=``, ``robustness=``, ``file=``...)."""
        entry = {"name": name, "role": role}
        entry.update(to_jsonable(results))
        self.models.append(entry)
        return entry

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

    def save(self, out_dir, stem="report"):
        """Write ``<out_dir>/<stem>.json`` and ``<stem>.md`` atomically; returns their paths."""
        json_path = os.path.join(out_dir, f"{stem}.json")
        md_path = os.path.join(out_dir, f"{stem}.md")
        atomic_write_json(json_path, self.to_dict())
        atomic_write_text(md_path, self.to_markdown())
        return json_path, md_path
