import json

import pytest

from tfsafe.report import SCHEMA_VERSION, SafetyReport


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
    header = md.splitlines()[4]
    assert "PGD acc" not in header  # columns nobody measured are left out


def _report_with_everything():
    report = SafetyReport("full", dataset="digits")
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
    assert titles[:4] == ["Size, accuracy and membership risk", "Membership inference ROC (log scale)",
                          "Robust accuracy vs eps", "Accuracy under natural corruptions"]
    assert len(titles) == 7  # plus tensorflow-privacy's ROC plot for each of the three models
    page = open(html_path).read()
    assert page.count("<img") == 7 and page.count("<tr class=") == 3 and "unsafe-baseline" in page


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
    assert "<table id=\"results\">" in dom and dom.count("<img") == 7
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", f"file://{html_path}"],
                   capture_output=True, timeout=120)
    pixels = image.imread(shot)
    assert pixels.shape[0] >= 1000
    # A page that rendered its plots has many distinct colours, a blank or broken one does not.
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200
