"""Helpers of the comparison and robustness benchmarks (loaded by file path; no benchmark is run)."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from tfsafe.models import small_cnn
from tfsafe.pipeline.compress import load_splits
from tfsafe.recipes import load_recipe

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)  # the scripts import bench_common as their own folder's module
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_data_file_gives_the_same_members_with_and_without_a_model(tmp_path):
    compare = _load("compare")
    path = str(tmp_path / "data.npz")
    info = compare.write_data_file("digits", None, path, train_size=300, test_size=200)
    assert (info["train"], info["test"]) == (300, 200)
    with np.load(path) as f:
        assert f["x_train"].shape[0] == 300 and f["x_test"].shape[0] == 200
    sizes = load_recipe("baseline")["data"]
    # The run that trains the dense model and the runs handed it must audit the same members
    # (a built-in name would be pooled for the first and kept split for the others).
    _, _, trained_here = load_splits(path, None, sizes, 0)
    _, _, handed_model = load_splits(path, None, sizes, 0, model=small_cnn((8, 8, 1), 10))
    for part in ("train", "validation", "nonmembers", "test"):
        np.testing.assert_array_equal(getattr(trained_here, part)[0], getattr(handed_model, part)[0])
    assert trained_here.provenance["members_known"] and handed_model.provenance["members_known"]


def test_compare_config_sets_the_protocol_radii_for_the_data_file():
    compare = _load("compare")
    args = compare.argparse.Namespace(config_dir=os.path.join(BENCHMARKS, "configs", "cifar10"), quick=False)
    atmc = compare._config("atmc", args, "cifar10")
    assert atmc["params"]["eps"] == pytest.approx(8 / 255) and atmc["evaluation"]["eps"] == [pytest.approx(8 / 255)]
    assert atmc["dense"]["architecture"] == "small_resnet"
    load_recipe("atmc", atmc)  # every override is a known recipe key
    baseline = compare._config("baseline", compare.argparse.Namespace(config_dir=None, quick=True), "mnist")
    assert baseline["evaluation"]["eps"] == [0.1, 0.2, 0.3] and "eps" not in baseline["params"]


def test_compare_starts_atmc_from_the_adversarially_trained_dense_model_when_there_is_one():
    compare = _load("compare")
    assert compare.atmc_start(None, "fgsm_rs") == "adv_dense" and compare.atmc_start(None, "none") == "dense"
    assert compare.atmc_start("dense", "fgsm_rs") == "dense"
    with pytest.raises(compare.InputError, match="--atmc_from adv_dense needs"):
        compare.atmc_start("adv_dense", "none")
    # ATMC runs after the first run that trains the dense model (the adversarial fine-tuning starts from it).
    assert compare.run_order(["baseline", "safecompress", "atmc", "rlnet"], "adv_dense") == [
        "baseline", "atmc", "safecompress", "rlnet"]
    assert compare.run_order(["atmc", "self_compress"], "adv_dense") == ["self_compress", "atmc"]
    assert compare.run_order(["rlnet", "atmc"], "adv_dense") == ["rlnet", "atmc"]  # alone: dense trained first
    assert compare.run_order(["atmc", "baseline"], "dense") == ["atmc", "baseline"]
    config_dir = os.path.join(BENCHMARKS, "configs", "cifar10")
    for start, robust in (("adv_dense", True), ("dense", False)):
        args = compare.argparse.Namespace(config_dir=config_dir, quick=False, atmc_from=start)
        assert load_recipe("atmc", compare._config("atmc", args, "cifar10"))["params"]["pretrained_robust"] is robust
        assert "pretrained_robust" not in compare._config("baseline", args, "cifar10")["params"]


def test_cyclic_learning_rate_rises_to_its_peak_at_two_fifths_and_falls_to_zero():
    bench = _load("robustness_bench")
    schedule = bench.CyclicLR(0.01, 100)
    values = [float(schedule(step)) for step in (0, 20, 40, 70, 100, 120)]
    np.testing.assert_allclose(values, [0.0, 0.005, 0.01, 0.005, 0.0, 0.0], atol=1e-7)


def test_fast_training_table_gives_accuracy_wall_and_cpu_time_ratios_to_pgd():
    bench = _load("robustness_bench")
    args = bench.parse_args(["--fast", "free", "--no_clean_metrics", "--fast_lr", "0.02", "--lr_schedule", "cyclic",
                             "--batch_size", "64"])
    args.eps = 0.3
    assert args.no_clean_metrics and args.fgsm_alpha == 1.25 and args.fast_ramp_epochs is None
    rows = {
        "standard": {"pgd_0.3": 0.0, "epoch_seconds": [1.0]},
        "PGD (eps 0.3)": {"pgd_0.3": 0.9, "epoch_seconds": [40.0, 30.0, 30.0], "epoch_cpu_seconds": [60.0, 40.0, 40.0],
                          "train_seconds": 100.0, "epochs": 3},
        "free (eps 0.3)": {"pgd_0.3": 0.864, "epoch_seconds": [16.0, 13.0], "epoch_cpu_seconds": [20.0, 15.0],
                           "train_seconds": 31.0, "epochs": 2, "guard": {"triggered_epoch": None}},
        "fgsm_rs (eps 0.3)": {"pgd_0.3": 0.81, "epoch_seconds": [10.0, 10.0], "epoch_cpu_seconds": [14.0, 14.0],
                              "train_seconds": 20.0, "epochs": 2, "guard": {"triggered_epoch": 1}},
    }
    lines = bench.fast_markdown(rows, args).splitlines()
    free = [c.strip() for c in lines[3].split("|")[1:-1]]
    # acc 0.864 / 0.9; wall 29 / 100; after tracing (13 x 2) / (30 x 3); CPU 35 / 140; 2 s of guard checks
    assert free == ["free (eps 0.3)", "0.8640", "0.960", "2", "29", "0.290", "0.289", "0.250", "2", "quiet", "met"]
    fgsm = [c.strip() for c in lines[4].split("|")[1:-1]]
    assert fgsm[2] == "0.900" and fgsm[7] == "0.200" and fgsm[-2:] == ["fell back to PGD at epoch 1", "MISSED"]
    # The fast rows' own peak: 10 batches x 2 epochs x 5 replays = 100 updates, the peak at update 40.
    schedule = bench.learning_rate(args, 640, 2, 5, peak=args.fast_lr)
    assert float(schedule(40)) == pytest.approx(0.02) and float(schedule(100)) == 0.0


def test_art_check_methods_option_parses_names_and_gives_each_method_its_short_training():
    art_check = _load("art_check")
    assert art_check.parse_args([]).methods == []
    args = art_check.parse_args(["--methods", "baseline, atmc,rlnet", "--train_eps", "0.2"])
    assert args.methods == ["baseline", "atmc", "rlnet"]
    for bad in ("atmc,nosuch", "atmc,atmc"):
        with pytest.raises(SystemExit):
            art_check.parse_args(["--methods", bad])
    atmc = art_check.method_params("atmc", args)
    assert atmc["eps"] == 0.2 and atmc["attack"] == "fgsm_rs" and atmc["epochs"] == 2 and atmc["deploy_epochs"] == 0
    assert art_check.method_params("rlnet", args)["attack"] == "fgsm_rs"
    assert "eps" not in art_check.method_params("baseline", args)
    for name in args.methods + ["safecompress", "self_compress"]:
        art_check.tfsafe.methods.get(name, **art_check.method_params(name, args))  # every key is a parameter
