import json

from tfsafe.report import SCHEMA_VERSION, SafetyReport


def test_report_writes_versioned_json_and_markdown(tmp_path):
    report = SafetyReport("cmp", dataset="digits")
    report.add_model("dense", "dense", accuracy=0.9812, size={"params": 1000, "sparsity": 0.0},
                     membership={"worst": {"auc": 0.61, "advantage": 0.2, "tpr_at_1pct_fpr": 0.05}})
    report.add_model("int8", "deployed", accuracy=0.97, file={"bytes": 4096, "gzip_bytes": 3000})
    json_path, md_path = report.save(tmp_path)
    data = json.loads(open(json_path).read())
    assert data["schema_version"] == SCHEMA_VERSION and data["meta"] == {"dataset": "digits"}
    assert [m["name"] for m in data["models"]] == ["dense", "int8"]
    md = open(md_path).read()
    assert "| dense | dense | 0.9812 | 1,000 |" in md
    assert "4,096" in md and "0.610" in md
    header = md.splitlines()[4]
    assert "PGD acc" not in header  # columns nobody measured are left out
