"""The verdict's size column reads the right way round when a file is larger than its reference."""

import pytest

from tfsafe.report import SafetyReport
from tfsafe.report_verdict import compare, size_text


def test_a_file_larger_than_the_dense_weights_says_larger():
    report = SafetyReport("size")
    report.add_model("dense", "dense", accuracy=0.9, size={"ideal_bytes": 1000})
    report.add_model("tiny int8", "deployed", accuracy=0.9, file={"bytes": 3300})
    (verdict,) = report.verdicts()
    assert verdict["smaller"] == pytest.approx(1000 / 3300)  # the ratio itself stays as it was
    assert size_text(verdict) == "larger: .tflite file is 3.3x dense's ideal bytes"
    md = report.to_markdown()
    assert "larger: .tflite file is 3.3x dense's ideal bytes" in md and "0.3x" not in md
    assert "larger: .tflite file is 3.3x dense&#x27;s ideal bytes" in report.to_html()  # HTML-escaped


def test_smaller_models_and_no_basis_keep_their_text():
    dense = {"name": "dense", "role": "dense", "size": {"ideal_bytes": 10000}}
    pruned = {"name": "pruned", "role": "compressed", "size": {"ideal_bytes": 1000}}
    assert size_text(compare(pruned, dense)) == "10.0x (ideal bytes -> ideal bytes)"
    assert size_text(compare(dense, dense)) == "1.0x (ideal bytes -> ideal bytes)"
    assert size_text(compare({"name": "m", "role": "compressed"}, dense)) == "-"
