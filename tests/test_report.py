import json

import numpy as np
import pytest

from tfsafe.report import SCHEMA_VERSION, SafetyReport
from tfsafe.report_verdict import compare


def test_report_writes_versioned_json_and_markdown(tmp_path):
    report = SafetyReport("cmp", dataset="digits")
    report.add_model("dense", "dense", accuracy=0.9812, size={"params": 1000, "sparsity": 0.0},
                     membership={"worst": {"auc": 0.61, "advantage": 0.2, "tpr_at_1pct_fpr": 0.05}})
    report.add_model("int8", "deployed", accuracy=0.97, file={"bytes": 4096, "gzip_bytes": 3000})
    json_path, md_path, html_path = report.save(tmp_path)
    data = json.loads(open(json_path).read())
    assert data["schema_version"] == SCHEMA_VERSION and data["meta"] == {"dataset": "digits"}
    assert [m["name"] for m in data["models"]] == ["dense", "int8"]
    md = open(md_path).read()
    assert "| dense | dense | 0.9812 | 1,000 |" in md
    assert "4,096" in md and "0.610" in md
    header = next(line for line in md.splitlines() if line.startswith("| model | role |"))
    assert "PGD acc" not in header  # columns nobody measured are left out
    # Every column shown is defined in the glossary.
    for title in header.strip("| ").split(" | "):
        assert f"- **{title}**: " in md


def _report_with_everything():
    report = SafetyReport("full", dataset="digits", splits={"train": 600, "test": 400},
                          params={"target_sparsity": 0.9, "epochs": 3})
    curve = {"attack": "threshold", "auc": 0.7, "advantage": 0.3, "tpr_at_1pct_fpr": 0.1, "tpr_at_01pct_fpr": 0.0,
             "fpr": [0.0, 0.01, 0.1, 1.0], "tpr": [0.0, 0.1, 0.5, 1.0]}
    for name, role, acc, auc in (("dense", "dense", 0.97, 0.7), ("tf-mot", "unsafe baseline", 0.95, 0.66),
                                 ("ours", "compressed", 0.955, 0.55)):
        report.add_model(
            name, role, accuracy=acc, size={"ideal_bytes": 50000 if role == "dense" else 9000},
            membership={"worst": {**curve, "auc": auc}, "attacks": [{**curve, "auc": auc}]},
            robustness={"pgd": {"0.1": acc - 0.2, "0.3": acc - 0.6}, "pgd_accuracy": acc - 0.6},
            corruptions={"table": {"gaussian_noise": {"1": 0.9, "2": 0.7}, "contrast": {"1": 0.8, "2": 0.5}}},
        )
    return report


@pytest.fixture(scope="module")
def saved_full_report(tmp_path_factory):
    report = _report_with_everything()
    out = tmp_path_factory.mktemp("report")
    _, _, html_path = report.save(out)
    return report, out, html_path


def test_html_has_table_and_every_figure(saved_full_report):
    report, _, html_path = saved_full_report
    titles = [t for t, _ in report.figures()]
    assert titles[:7] == ["Size, accuracy and membership risk", "Membership inference ROC (log scale)",
                          "TPR at 1% FPR vs test accuracy", "Robust accuracy vs eps",
                          "Accuracy under natural corruptions: dense",
                          "Accuracy under natural corruptions: tf-mot", "Accuracy under natural corruptions: ours"]
    assert len(titles) == 10  # plus tensorflow-privacy's ROC plot for each of the three models
    page = open(html_path).read()
    assert page.count("<img") == 10 and 'class="unsafe-baseline"' in page and 'class="compressed"' in page
    # splits and params are tables, not Python dicts
    assert 'id="meta-splits"' in page and "<td>train</td><td>600</td>" in page and "{&#x27;" not in page
    md = report.to_markdown()
    assert "| target_sparsity | 0.9 |" in md and "{'" not in md


def _dp_and_early_state_report():
    report = SafetyReport("privacy", dataset="purchase-like")
    worst = {"auc": 0.9, "advantage": 0.6, "tpr_at_1pct_fpr": 0.40}
    report.add_model("dense", "dense", accuracy=0.70, membership={"worst": worst})
    report.add_model("dp_sgd", "compressed", accuracy=0.30, membership={"worst": {**worst, "tpr_at_1pct_fpr": 0.02}},
                     method_info={"epsilon": 4.6391, "delta": 1e-5, "steps": 280, "privacy": {
                         "noise_multiplier": 2.0, "l2_norm_clip": 1.0, "sampling_rate": 0.04,
                         "accountant": "RDP", "guarantee": "example-level (epsilon, delta)-DP"}})
    report.add_model("safecompress", "compressed", accuracy=0.45,
                     membership={"worst": {**worst, "tpr_at_1pct_fpr": 0.1}},
                     selection={"kept_round": 4, "kept_step": 40, "total_steps": 70, "early_state": True,
                                "note": "kept round 4's winner, an early state after 40 of 70 training steps"})
    return report


def test_markdown_shows_dp_epsilon_delta_and_the_early_state_note():
    md = _dp_and_early_state_report().to_markdown()
    header = next(line for line in md.splitlines() if line.startswith("| model | role |"))
    assert header.endswith("| epsilon | delta |")
    assert "| dp_sgd | compressed | 0.3000 |" in md and "| 4.64 | 1.0e-05 |" in md
    assert "## Method notes" in md
    assert "- **dp_sgd**: DP-SGD: epsilon = 4.64 at delta = 1.0e-05 (noise multiplier 2, l2 norm clip 1, " \
           "sampling rate 0.04, 280 steps); example-level (epsilon, delta)-DP; accountant: RDP" in md
    assert ("- **safecompress**: ⚠ selection kept round 4's winner, an early state after 40 of 70 training steps: "
            "its leakage and accuracy are those of a shorter run; compare with TF-MOT pruning stopped at the same "
            "step (baseline max_steps=40)") in md
    assert "- **epsilon**: " in md and "- **delta**: " in md  # glossary


def test_html_shows_the_notes_and_a_tpr_vs_accuracy_plot():
    report = _dp_and_early_state_report()
    assert [t for t, _ in report.figures()] == ["TPR at 1% FPR vs test accuracy"]
    page = report.to_html()
    assert 'id="method-notes"' in page and '<li class="worse"><b>safecompress</b>' in page
    assert "epsilon = 4.64 at delta = 1.0e-05" in page and page.count("<img") == 1


def test_verdict_flags_a_compressed_model_easier_to_attack_than_dense():
    report = SafetyReport("flag")
    attack = {"advantage": 0.2, "tpr_at_1pct_fpr": 0.05, "tpr_at_01pct_fpr": 0.0}
    report.add_model("dense", "dense", accuracy=0.97, size={"ideal_bytes": 40000},
                     membership={"worst": {"auc": 0.60, **attack}, "attacks": [{"attack": "mlp", "auc": 0.60,
                                                                                  **attack}]},
                     robustness={"pgd_accuracy": 0.30, "corruption_mean_accuracy": 0.80})
    report.add_model("pruned", "compressed", accuracy=0.965, size={"ideal_bytes": 4000},
                     membership={"worst": {"auc": 0.66, **attack}, "attacks": [{"attack": "mlp", "auc": 0.66,
                                                                                  **attack}]},
                     robustness={"pgd_accuracy": 0.305, "corruption_mean_accuracy": 0.85})
    (verdict,) = report.verdicts()
    assert verdict["smaller"] == pytest.approx(10.0) and verdict["accuracy_change"] == pytest.approx(-0.005)
    assert {k: v["verdict"] for k, v in verdict["threats"].items()} == {
        "adversarial": "same", "corruption": "better", "membership": "worse"}
    assert verdict["worse"] == ["membership"]
    md = report.to_markdown()
    assert md.index("## Verdict") < md.index("## Results")
    assert "⚠ pruned is easier to attack than dense (membership)." in md
    assert "WORSE ⚠ (0.600 -> 0.660)" in md and "10.0x (ideal bytes -> ideal bytes)" in md
    assert "0.660 (MLP)" in md  # the worst-case cell names the attack
    assert '<tr class="worse">' in report.to_html()
    assert report.to_dict()["verdicts"][0]["worse"] == ["membership"]
    report.models[1]["membership"]["worst"]["auc"] = 0.605  # within the tolerance: same, no flag
    assert report.verdicts()[0]["worse"] == [] and "⚠" not in report.to_markdown()
    # A .tflite file is sized against the dense model's float32 bytes, not against another
    # model's ideal bytes (no like-for-like basis: no ratio).
    report.models[1]["role"] = "unsafe baseline"
    report.add_model("pruned int8", "deployed", accuracy=0.965, file={"bytes": 8000})
    against_dense, against_baseline = report.verdicts()[1:]
    assert against_dense["smaller"] == pytest.approx(5.0) and against_dense["size_basis"] == (
        "ideal bytes -> .tflite file")
    assert against_baseline["against"] == "pruned" and against_baseline["smaller"] is None


def test_membership_same_threshold_is_one_standard_error_of_the_audit():
    from scipy.stats import norm, rankdata

    from tfsafe.report_verdict import auc_standard_error, threat_tolerance

    # At chance the Hanley-McNeil error has the closed form sqrt((n1 + n2 + 1) / (12 n1 n2)).
    assert auc_standard_error(0.5, 500, 500) == pytest.approx((1001 / (12 * 500 * 500)) ** 0.5)
    # And it matches the spread of AUCs simulated at AUC 0.6 with 200 + 200 examples (binormal scores).
    rng = np.random.default_rng(0)
    shift = 2 ** 0.5 * norm.ppf(0.6)
    aucs = []
    for _ in range(400):
        scores = np.concatenate([rng.normal(shift, 1, 200), rng.normal(0, 1, 200)])
        ranks = rankdata(scores)[:200]
        aucs.append((ranks.sum() - 200 * 201 / 2) / (200 * 200))
    assert auc_standard_error(0.6, 200, 200) == pytest.approx(np.std(aucs), rel=0.15)

    def entry(auc, n):
        return {"name": f"m{n}", "role": "dense", "accuracy": 0.9,
                "membership": {"worst": {"auc": auc}, "n_members": n, "n_nonmembers": n}}

    # AUC 0.600 -> 0.625: within one standard error of 200 + 200 (0.028): same; of 10,000 + 10,000 (0.004): worse.
    small, large = compare({**entry(0.625, 200), "name": "c"}, entry(0.6, 200)), compare(
        {**entry(0.625, 10000), "name": "c"}, entry(0.6, 10000))
    assert small["threats"]["membership"]["verdict"] == "same" and small["worse"] == []
    assert small["threats"]["membership"]["tolerance"] == pytest.approx(0.0282, abs=1e-4)
    assert large["threats"]["membership"]["verdict"] == "worse" and large["worse"] == ["membership"]
    assert threat_tolerance("membership", {"membership": {"worst": {"auc": 0.6}}}) == 0.01  # sizes unknown
    assert threat_tolerance("adversarial", entry(0.6, 200)) == 0.01


def test_corruption_heatmap_labels_cannot_overlap():
    from tfsafe.report_plots import corruption_figure

    table = {name: {"1": 0.9, "2": 0.6, "3": 0.3} for name in
             ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "brightness",
              "contrast", "elastic_transform")}
    fig = corruption_figure("a compressed model with a long name", table)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    heatmap, colorbar = fig.axes
    labels = [t.get_window_extent(renderer) for t in heatmap.get_yticklabels()]
    figure_box = fig.bbox
    image_box = heatmap.get_window_extent(renderer)
    assert len(labels) == 8
    for i, box in enumerate(labels):
        assert box.x0 >= figure_box.x0 and box.y0 >= figure_box.y0  # inside the figure
        assert box.x1 <= image_box.x0 + 1  # left of the heat map, not on it
        assert not box.overlaps(colorbar.get_window_extent(renderer))
        assert not any(box.overlaps(other) for other in labels[i + 1:])


def test_privacy_roc_title_names_model_and_attack():
    from tfsafe.report_plots import privacy_roc_figure

    entry = {"name": "dense", "membership": {"attacks": [
        {"attack": "mlp", "auc": 0.7, "fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.4, 1.0]}]}}
    assert privacy_roc_figure(entry).axes[0].get_title() == "dense - MLP attack"


def test_html_renders_in_a_headless_browser(saved_full_report):
    import shutil
    import subprocess

    import numpy as np
    from matplotlib import image

    _, tmp_path, html_path = saved_full_report
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", f"file://{html_path}"], capture_output=True, text=True,
                         timeout=120).stdout
    assert "<table id=\"results\">" in dom and dom.count("<img") == 10 and "id=\"verdict\"" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", f"file://{html_path}"],
                   capture_output=True, timeout=120)
    pixels = image.imread(shot)
    assert pixels.shape[0] >= 1000
    # A page that rendered its plots has many distinct colours, a blank or broken one does not.
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200


def test_audit_report_renders_in_a_headless_browser(tmp_path):
    import shutil
    import subprocess

    from tfsafe.report_audit import AuditReport

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    curve = {"fpr": [0.0, 0.002, 0.01, 0.1, 1.0], "tpr": [0.0, 0.03, 0.09, 0.4, 1.0]}
    audit = {"attacks": [{"attack": "threshold", "auc": 0.71, "advantage": 0.3, "tpr_at_1pct_fpr": 0.09,
                          "tpr_at_01pct_fpr": 0.03, **curve},
                         {"attack": "mlp", "auc": 0.64, "advantage": 0.35, "tpr_at_1pct_fpr": 0.02,
                          "tpr_at_01pct_fpr": 0.0, **curve}],
             "worst": {"auc": 0.71, "advantage": 0.35, "tpr_at_1pct_fpr": 0.09, "attack": "threshold"},
             "n_members": 500, "n_nonmembers": 500}
    report = AuditReport("model.tflite", audit, {"members": 1.0, "nonmembers": 0.9})
    assert report.level == "high" and report.verdict.startswith("High membership risk.")
    assert "9.0% of the training examples, 9.0 times what guessing achieves" in report.verdict
    assert "gap +10.0 points" in report.verdict
    assert report.worst()["advantage"] == (0.35, "mlp") and report.worst()["auc"] == (0.71, "threshold")
    _, _, html_path = report.save(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", f"file://{html_path}"], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'class="verdict high"' in dom and dom.count("<img") == 1 and 'id="attacks"' in dom
