import json
import time

import pytest

from tfsafe.errors import InputError
from tfsafe.pipeline.run_state import RUN_FILE, RunState


def test_finished_stages_survive_a_restart_with_resume(tmp_path):
    state = RunState(tmp_path, {"method": "atmc", "recipe": {"bits": 8}})
    state.finish("dense", time.perf_counter(), depends={"epochs": 3}, model="dense.keras")
    saved = json.loads((tmp_path / RUN_FILE).read_text())
    assert saved["stages"]["dense"]["outputs"] == {"model": "dense.keras"}

    resumed = RunState(tmp_path, {"method": "atmc", "recipe": {"bits": 8}}, resume=True)
    assert resumed.done("dense", {"epochs": 3}) and not resumed.done("atmc")
    assert resumed.outputs("dense")["model"] == "dense.keras"
    assert not resumed.done("dense", {"epochs": 4}) and resumed.recorded("dense")  # its settings changed
    resumed.forget("dense")
    assert not RunState(tmp_path, {"method": "atmc", "recipe": {"bits": 8}}, resume=True).recorded("dense")


def test_a_run_folder_is_not_overwritten_or_resumed_with_other_settings(tmp_path):
    RunState(tmp_path, {"method": "atmc", "recipe": {"bits": 8}})
    with pytest.raises(InputError, match="already holds a run.*--resume"):
        RunState(tmp_path, {"method": "atmc", "recipe": {"bits": 8}})
    with pytest.raises(InputError, match="differs in: recipe"):
        RunState(tmp_path, {"method": "atmc", "recipe": {"bits": 4}}, resume=True)


def test_a_corrupt_run_record_is_reported(tmp_path):
    (tmp_path / RUN_FILE).write_text("{broken")
    with pytest.raises(InputError, match="not a tfsafe run record"):
        RunState(tmp_path, {"method": "atmc"}, resume=True)
