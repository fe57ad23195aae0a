"""Figures for :class:`tfsafe.report.SafetyReport` (matplotlib, rendered to PNG bytes).

Each function takes the report's model entries and returns PNG bytes, or ``None`` when no
entry carries the data the figure needs.
"""

import io

import numpy as np

from tfsafe.report_verdict import attack_label

__all__ = ["membership_roc", "attack_rocs", "robustness_curve", "corruption_figure", "corruption_heatmaps",
           "tradeoff", "privacy_roc", "tpr_vs_accuracy"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig):
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _named(models, read):
    """``[(model name, read(entry))]`` for the entries where ``read`` finds data."""
    rows = [(m["name"], read(m)) for m in models]
    return [(name, value) for name, value in rows if value]


def _worst_curve(entry):
    attacks = (entry.get("membership") or {}).get("attacks") or []
    curves = [a for a in attacks if a.get("fpr") and a.get("tpr")]
    return max(curves, key=lambda a: a["auc"]) if curves else None


def membership_roc(models):
    """ROC of each model's strongest membership attack, on log axes (where low FPR matters)."""
    rows = _named(models, _worst_curve)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    floor = 1e-3
    for name, curve in rows:
        fpr = np.clip(curve["fpr"], floor, 1)
        tpr = np.clip(curve["tpr"], floor, 1)
        ax.plot(fpr, tpr, label=f"{name} ({attack_label(curve['attack'])}, AUC {curve['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate", ylabel="true positive rate",
           title="Membership inference: strongest attack per model")
    ax.legend(fontsize=7)
    return _png(fig)


def privacy_roc_figure(entry):
    """tensorflow-privacy's own ROC plot of one model's strongest attack, as a Figure (or None)."""
    curve = _worst_curve(entry)
    if curve is None:
        return None
    from tfsafe.safety.membership import _tf_privacy

    data_structures, _ = _tf_privacy()
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import plotting

    fpr = np.asarray(curve["fpr"])
    roc = data_structures.RocCurve(tpr=np.asarray(curve["tpr"]), fpr=fpr, thresholds=np.zeros_like(fpr),
                                   test_train_ratio=1.0)
    fig = plotting.plot_roc_curve(roc)
    fig.set_size_inches(4.2, 3.6)
    fig.axes[0].set_title(f"{entry['name']} - {attack_label(curve['attack'])} attack")
    return fig


def privacy_roc(entry):
    """:func:`privacy_roc_figure` as PNG bytes (or None)."""
    fig = privacy_roc_figure(entry)
    return None if fig is None else _png(fig)


def robustness_curve(models):
    """PGD accuracy against the attack radius eps, one line per model."""
    rows = _named(models, lambda m: (m.get("robustness") or {}).get("pgd"))
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for name, pgd in rows:
        eps = sorted(float(e) for e in pgd)
        acc = [pgd[k] for k in sorted(pgd, key=float)]
        clean = next((m.get("accuracy") for m in models if m["name"] == name), None)
        if clean is not None:
            eps, acc = [0.0, *eps], [clean, *acc]
        ax.plot(eps, acc, marker="o", label=name)
    ax.set(xlabel="eps (L-inf)", ylabel="accuracy under PGD", ylim=(0, 1.02), title="Robust accuracy vs eps")
    ax.legend(fontsize=7)
    return _png(fig)


def corruption_figure(name, table):
    """The accuracy heat map of one model (corruption rows x severity columns) as a Figure.

    One figure per model with constrained layout: the long corruption names on the y axis
    get their own room and cannot run into a neighbouring panel.
    """
    plt = _pyplot()
    corruptions = list(table)
    severities = sorted({int(s) for t in table.values() for s in t})
    grid = np.array([[table[c].get(str(s), table[c].get(s, np.nan)) for s in severities] for c in corruptions],
                    dtype=float)
    fig, ax = plt.subplots(figsize=(4.6, 0.32 * len(corruptions) + 1.6), layout="constrained")
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set(xticks=range(len(severities)), xticklabels=severities, yticks=range(len(corruptions)),
           yticklabels=corruptions, xlabel="severity", title=f"{name}: accuracy under corruptions")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if grid[i, j] < 0.5 else "black")
    fig.colorbar(image, ax=ax, shrink=0.9, label="accuracy")
    return fig


def corruption_heatmaps(models):
    """``[(model name, png_bytes)]``: one corruption heat map per model that has a table."""
    rows = _named(models, lambda m: (m.get("corruptions") or {}).get("table"))
    return [(name, _png(corruption_figure(name, table))) for name, table in rows]


def attack_rocs(membership, title):
    """Every attack's ROC of one membership audit on log-log axes, with the chance line."""
    curves = [a for a in (membership or {}).get("attacks") or [] if a.get("fpr") and a.get("tpr")]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 4.4), layout="constrained")
    n_non = membership.get("n_nonmembers") or 0
    floor = min(1e-3, 1.0 / n_non) if n_non else 1e-3
    for curve in sorted(curves, key=lambda a: -a["auc"]):
        ax.plot(np.clip(curve["fpr"], floor, 1), np.clip(curve["tpr"], floor, 1),
                label=f"{attack_label(curve['attack'])} (AUC {curve['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    if n_non:
        ax.axvline(1.0 / n_non, color="grey", lw=0.6, ls=":", label=f"smallest resolvable FPR (1/{n_non})")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7)
    return _png(fig)


def tradeoff(models):
    """Size (ideal bytes, log) against test accuracy; colour = worst-case membership AUC."""
    points = []
    for m in models:
        size = (m.get("size") or {}).get("ideal_bytes") or (m.get("file") or {}).get("bytes")
        if size and m.get("accuracy") is not None:
            auc = ((m.get("membership") or {}).get("worst") or {}).get("auc")
            points.append((m["name"], size, m["accuracy"], auc))
    if len(points) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    aucs = [p[3] if p[3] is not None else np.nan for p in points]
    scatter = ax.scatter([p[1] for p in points], [p[2] for p in points], c=aucs, cmap="coolwarm", vmin=0.5,
                         vmax=max(0.75, np.nanmax(aucs) if not np.all(np.isnan(aucs)) else 0.75), s=60,
                         edgecolors="k")
    for name, size, acc, _ in points:
        ax.annotate(name, (size, acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xscale="log", xlabel="bytes (ideal, or .tflite file)", ylabel="test accuracy",
           title="Size / accuracy / privacy trade-off")
    fig.colorbar(scatter, ax=ax, label="worst-case MIA AUC")
    return _png(fig)


def tpr_vs_accuracy(models):
    """Worst-case TPR at 1% FPR against test accuracy, one labelled point per model.

    The membership-risk-vs-utility view of Carlini et al. ("Membership Inference Attacks From
    First Principles", 2022): lower and further right is better. A model with an epsilon (a
    DP-SGD run, ``method_info["epsilon"]``) is drawn as a square and labelled with it; the
    dotted line is chance (TPR = FPR = 0.01). ``None`` with fewer than two measured models.
    """
    points = []
    for m in models:
        tpr = ((m.get("membership") or {}).get("worst") or {}).get("tpr_at_1pct_fpr")
        if tpr is not None and m.get("accuracy") is not None and not m.get("membership_not_meaningful"):
            points.append((m["name"], m["accuracy"], tpr, (m.get("method_info") or {}).get("epsilon")))
    if len(points) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for name, acc, tpr, epsilon in points:
        ax.scatter(acc, tpr, marker="s" if epsilon is not None else "o", s=50, edgecolors="k")
        label = name if epsilon is None else f"{name} (eps {epsilon:.2g})"
        ax.annotate(label, (acc, tpr), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.01, color="grey", lw=0.7, ls=":", label="chance (TPR = FPR = 1%)")
    ax.set(xlabel="test accuracy", ylabel="TPR at 1% FPR (strongest attack)",
           title="Membership risk vs accuracy")
    ax.legend(fontsize=7)
    return _png(fig)
