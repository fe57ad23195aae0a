import pytest
from pipeline_helpers import tiny_config

from tfsafe.pipeline import compress_model


@pytest.mark.parametrize("method", ["safecompress", "atmc", "self_compress"])
def test_each_method_runs_from_its_recipe(method, tmp_path):
    report = compress_model(method, "digits", config=tiny_config(method), out_dir=tmp_path, verbose=0,
                            log=lambda message: None)
    dense, compressed, deployed = report["models"]
    assert (compressed["name"], compressed["role"], deployed["role"]) == (method, "compressed", "deployed")
    # ATMC's budget holds for its factors; its merged (deployed) kernels are reported apart.
    assert compressed["size"]["stored_ideal_bytes"] < 0.6 * dense["size"]["ideal_bytes"]
    assert compressed["size"]["ideal_bytes"] <= dense["size"]["ideal_bytes"]
    assert deployed["file"]["bytes"] > 0 and deployed["parity"]["top1_agreement"] >= 0.9
    info = compressed["method_info"]
    if method == "safecompress":
        assert compressed["size"]["sparsity"] == pytest.approx(0.9, abs=0.02) and info["rounds"] >= 1
    elif method == "atmc":
        assert 0 < compressed["size"]["nonzeros"] <= info["budget"]
        # The deploy stage puts the budget on the merged kernels that ship (ratio 0.2 of dense).
        assert compressed["size"]["ideal_bytes"] <= 0.2 * dense["size"]["ideal_bytes"] + 1e-6
    else:
        assert compressed["size"]["average_bits"] < 8.5 and info["safety_source"] == "validation"
    for entry in report["models"]:
        assert set(entry["robustness"]["pgd"]) == {"0.1", "0.2", "0.3"}
        if entry["role"] != "deployed":  # white-box: the recipe's attack set, masking checks off in TINY
            assert entry["robustness"]["attacks"] == ["pgd", "apgd-ce", "apgd-dlr"]
            assert entry["robustness"].get("gradient_masking_passed") is None
        assert entry["membership"]["worst"]["attack"]


def test_evaluation_attack_set_and_masking_checks_reach_the_safety_tests(tmp_path):
    config = tiny_config("baseline")
    config["evaluation"] = dict(config["evaluation"], attacks=["pgd", "apgd-ce"], masking_checks=True)
    report = compress_model("baseline", "digits", config=config, out_dir=tmp_path, verbose=0, log=lambda m: None)
    compressed = report["models"][1]
    assert compressed["robustness"]["attacks"] == ["pgd", "apgd-ce"]
    assert compressed["robustness"]["gradient_masking_passed"] in (True, False)
