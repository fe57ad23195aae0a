"""The privacy benchmark's report: the table, the issue's two targets, the plot and the HTML.

Rendering only (no training): :mod:`privacy_bench` runs the rows and calls these, and
``privacy_bench.py --from_json`` / ``--from_log`` re-render a finished or interrupted run.
"""

import ast
import base64
import io
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["COLUMNS", "SAFECOMPRESS_ROWS", "to_markdown", "report_from_log", "targets", "tradeoff_figure",
           "save_plot", "to_html"]

SAFECOMPRESS_ROWS = ("mia_safecompress", "mia_safecompress_bounded", "safecompress_relax", "safecompress_relax_bounded",
                     "safecompress_mia_pgd")

COLUMNS = [("row", "row", "{}"), ("test_accuracy", "test acc", "{:.3f}"), ("lira_auc", "LiRA AUC", "{:.3f}"),
           ("lira_tpr_at_01pct_fpr", "LiRA TPR@0.1%", "{:.3f}"), ("lira_tpr_at_1pct_fpr", "LiRA TPR@1%", "{:.3f}"),
           ("rmia_auc", "RMIA AUC", "{:.3f}"), ("rmia_tpr_at_1pct_fpr", "RMIA TPR@1%", "{:.3f}"),
           ("tfp_auc", "tf-privacy AUC", "{:.3f}"), ("epsilon", "epsilon", "{:.2f}"),
           ("sparsity", "sparsity", "{:.3f}"), ("tflite_bytes", ".tflite bytes", "{:,}"),
           ("tflite_gzip_bytes", "gzip bytes", "{:,}"), ("steps", "steps", "{}"),
           ("seconds", "s", "{:.0f}")]


def to_markdown(report):
    columns = [c for c in COLUMNS if any(c[0] in r for r in report["rows"])]
    lines = [f"Setting `{report['setting']}`, splits {report['splits']}, {report['reference_models']} LiRA "
             f"reference models; smallest resolvable FPR {report['min_fpr']:.4f}"
             + (" (TPR@0.1% FPR is not resolvable, n/r: fewer than 1,000 non-members; raw values in the JSON)"
                if report["min_fpr"] > 0.001 else ""),
             "", "| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    unresolved = {key for key in ("lira_tpr_at_01pct_fpr", "rmia_tpr_at_01pct_fpr") if report["min_fpr"] > 0.001}
    for row in report["rows"]:
        cells = ["-" if row.get(key) is None else ("n/r" if key in unresolved else fmt.format(row[key]))
                 for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['row']}: {r['selection']} (score: {' + '.join(r['selection_tests'])})"
             for r in report["rows"] if r.get("selection")]
    notes += [f"- {r['row']}: .tflite export failed ({r['tflite_error']})" for r in report["rows"]
              if r.get("tflite_error")]
    notes += [f"- target: {t['text']}" for t in targets(report)]
    if report.get("partial"):
        notes.append(f"- partial run: only the {len(report['rows'])} rows it finished ({report['partial']})")
    if report.get("dp_skipped"):
        notes.append("- DP-SGD rows left out (--skip_dp)")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def report_from_log(path, args):
    """A report from the rows a run printed to its log (each row a JSON line, values at 4
    significant digits): what an interrupted run finished, marked ``partial``."""
    rows, splits = [], None
    with open(path) as f:
        for line in f:
            if line.startswith(f"{args.setting}: splits "):
                splits = ast.literal_eval(line.split("splits ", 1)[1].strip())
            elif line.startswith('{"row": '):
                rows.append(json.loads(line))
    if splits is None or not rows:
        sys.exit(f"'{path}' holds no '{args.setting}: splits' line or no rows; is it a privacy_bench log?")
    return {"setting": args.setting, "args": vars(args), "splits": splits, "min_fpr": 1.0 / splits["nonmembers"],
            "reference_models": args.reference_models, "rmia": any("rmia_auc" in r for r in rows),
            "dp_skipped": bool(args.skip_dp), "partial": f"rows printed to {os.path.basename(path)}", "rows": rows}


def targets(report, max_drop=0.01):
    """The issue's two targets, checked on the rows of one run (plain data for the JSON and the table).

    1. MIA-SafeCompress at the target sparsity (each of its rows but the MIA + PGD one): LiRA
       TPR@1%FPR <= 0.5x TF-MOT pruning's, at <= ``max_drop`` lower test accuracy.
    2. SafeCompress (each row) beats or matches DP-SGD's LiRA TPR@1%FPR at equal test accuracy
       (within ``max_drop``); without a DP row of equal accuracy the target cannot be checked.

    Returns:
        A list of ``{"target", "met" (True / False / None: not checkable), "text"}``.
    """
    rows = {r["row"]: r for r in report["rows"]}
    out = []
    tfmot = rows.get("tfmot")
    for name in SAFECOMPRESS_ROWS:
        sc = rows.get(name)
        if not (sc and tfmot) or name == "safecompress_mia_pgd":
            continue
        ratio = sc["lira_tpr_at_1pct_fpr"] / max(tfmot["lira_tpr_at_1pct_fpr"], 1e-12)
        drop = tfmot["test_accuracy"] - sc["test_accuracy"]
        met = ratio <= 0.5 and drop <= max_drop
        out.append({"target": "safecompress_vs_tfmot" if name == "mia_safecompress" else f"{name}_vs_tfmot",
                    "met": bool(met), "ratio": ratio, "accuracy_drop": drop,
                    "text": f"{name} TPR@1%FPR {sc['lira_tpr_at_1pct_fpr']:.3f} vs TF-MOT "
                            f"{tfmot['lira_tpr_at_1pct_fpr']:.3f} ({ratio:.2f}x, target <= 0.5x) at "
                            f"{-drop * 100:+.1f} points accuracy (target >= -{max_drop * 100:.0f}): "
                            f"{'met' if met else 'NOT met'}"})
    dp_rows = [r for r in report["rows"] if r.get("epsilon") is not None and r["row"].startswith("dp_sgd")]
    for name in SAFECOMPRESS_ROWS:
        if name not in rows:
            continue
        mine = rows[name]
        if not dp_rows:
            out.append({"target": f"{name}_vs_dp_sgd", "met": None,
                        "text": f"{name} vs DP-SGD: no DP-SGD row in this run"})
            continue
        near = [r for r in dp_rows if abs(r["test_accuracy"] - mine["test_accuracy"]) <= max_drop]
        if not near:
            best = max(dp_rows, key=lambda r: r["test_accuracy"])
            out.append({"target": f"{name}_vs_dp_sgd", "met": None,
                        "text": f"{name} vs DP-SGD: no DP-SGD row within {max_drop * 100:.0f} point of its accuracy "
                                f"{mine['test_accuracy']:.3f} (best DP-SGD {best['row']}: "
                                f"{best['test_accuracy']:.3f}, TPR@1% {best['lira_tpr_at_1pct_fpr']:.3f}); "
                                "not checkable at equal accuracy"})
            continue
        dp = min(near, key=lambda r: r["lira_tpr_at_1pct_fpr"])
        met = mine["lira_tpr_at_1pct_fpr"] <= dp["lira_tpr_at_1pct_fpr"]
        out.append({"target": f"{name}_vs_dp_sgd", "met": bool(met),
                    "text": f"{name} TPR@1%FPR {mine['lira_tpr_at_1pct_fpr']:.3f} vs {dp['row']} "
                            f"{dp['lira_tpr_at_1pct_fpr']:.3f} at accuracy {mine['test_accuracy']:.3f} vs "
                            f"{dp['test_accuracy']:.3f}: {'met' if met else 'NOT met'}"})
    return out


def tradeoff_figure(report):
    """TPR at 1% FPR (LiRA, worst score) against test accuracy, one point per row (named in the legend).

    Lower and further right is better: as accurate, and fewer members found at 1% FPR. The
    dotted line is chance (TPR = FPR = 0.01).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = {}  # rows at the same point (e.g. two selections that kept the same state) share one label
    for row in report["rows"]:
        label = row["row"] + (f" (eps {row['epsilon']:.1f})" if row.get("epsilon") is not None else "")
        marker = "s" if row.get("epsilon") is not None else ("^" if row.get("selection") else "o")
        points.setdefault((row["test_accuracy"], row["lira_tpr_at_1pct_fpr"]), (marker, []))[1].append(label)
    colors = plt.get_cmap("tab20").colors
    for i, ((acc, tpr), (marker, labels)) in enumerate(points.items()):
        # A legend entry per point: with a dozen rows, labels printed beside the points overlap.
        ax.scatter(acc, tpr, marker=marker, s=45, edgecolors="k", color=colors[i % len(colors)],
                   label=" = ".join(labels))
    ax.axhline(0.01, color="grey", lw=0.7, ls=":", label="chance (TPR = FPR = 1%)")
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("LiRA TPR at 1% FPR (worst score)")
    ax.set_title(f"{report['setting']}: {report['splits']['train']:,} members, "
                 f"{report['reference_models']} reference models")
    ax.legend(fontsize=6.5, loc="upper left", ncol=1, framealpha=0.9)
    fig.tight_layout()
    return fig


def save_plot(report, path):
    """Write :func:`tradeoff_figure` as a PNG at ``path`` (atomically: a temp file, then rename)."""
    fig = tradeoff_figure(report)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def to_html(report, markdown):
    fig = tradeoff_figure(report)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    image = base64.b64encode(buffer.getvalue()).decode()
    return (f"<html><head><meta charset='utf-8'><title>privacy_bench {report['setting']}</title></head><body>"
            f"<h1>privacy_bench: {report['setting']}</h1><pre>{markdown}</pre>"
            f"<img alt='TPR at 1% FPR against test accuracy' src='data:image/png;base64,{image}'></body></html>")
