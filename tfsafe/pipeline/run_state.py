"""The record of a ``tfsafe compress`` run in its output folder (``run.json``).

Each finished stage is written to ``run.json`` (atomically) with its outputs, its time and
the part of the configuration it depends on, right after its files are. A run that is killed
loses at most the stage it was in. ``resume`` refuses to continue a run on other data (the
run's identity: method, data, model, seed, split sizes); a stage whose own settings changed
(e.g. only ``export``) is redone, and so is every stage after it.
"""

import json
import os
import time

from tfsafe.errors import InputError
from tfsafe.io import atomic_write_json

__all__ = ["RunState", "RUN_FILE"]

RUN_FILE = "run.json"
RUN_SCHEMA = 2


class RunState:
    """Which stages of a run are done, kept in ``<out_dir>/run.json``.

    Args:
        out_dir: the run's folder.
        settings: what identifies the run (method, data, model, seed, splits); a resumed run
            must match.
        resume: continue the run already in ``out_dir``.
        overwrite: start over even if ``out_dir`` holds a run.

    Example:
        >>> state = RunState("/tmp/run-doc", {"method": "baseline"}, resume=False, overwrite=True)
        >>> state.done("dense", {"epochs": 3})
        False
    """

    def __init__(self, out_dir, settings, resume=False, overwrite=False):
        self.out_dir = os.fspath(out_dir)
        self.settings = json.loads(json.dumps(settings))
        self.path = os.path.join(self.out_dir, RUN_FILE)
        self.stages = {}
        if os.path.exists(self.path) and not overwrite:
            saved = self._read()
            if not resume:
                raise InputError(f"'{self.out_dir}' already holds a run ({', '.join(saved['stages']) or 'no'} "
                                 "stages done); pass --resume to continue it or choose another --out.")
            self._check_same(saved["settings"])
            self.stages = saved["stages"]
        os.makedirs(self.out_dir, exist_ok=True)
        self._write()

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("schema") != RUN_SCHEMA or not isinstance(saved.get("stages"), dict):
                raise ValueError(f"unknown schema {saved.get('schema')!r}")
            return saved
        except (OSError, ValueError) as err:
            raise InputError(f"'{self.path}' is not a tfsafe run record of this version ({err}); remove it or "
                             "choose another --out.") from err

    def _check_same(self, saved):
        if saved == self.settings:
            return
        changed = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
        raise InputError(f"--resume with other data than the run in '{self.out_dir}' (differs in: "
                         f"{', '.join(changed)}); rerun with the same flags and data settings, or choose another "
                         "--out.")

    def _write(self):
        atomic_write_json(self.path, {"schema": RUN_SCHEMA, "settings": self.settings, "stages": self.stages})

    def done(self, stage, depends=None):
        """Whether ``stage`` finished (now or before the resume) with the same ``depends`` settings."""
        return stage in self.stages and self.stages[stage].get("depends") == json.loads(json.dumps(depends))

    def recorded(self, stage):
        """Whether ``stage`` finished at some point, whatever its settings were."""
        return stage in self.stages

    def outputs(self, stage):
        """What ``stage`` recorded when it finished."""
        return self.stages[stage]["outputs"]

    def finish(self, stage, started, depends=None, **outputs):
        """Record ``stage`` as done with its ``outputs`` (JSON-able), settings and time since ``started``."""
        self.stages[stage] = {"seconds": round(time.perf_counter() - started, 2),
                              "depends": json.loads(json.dumps(depends)), "outputs": outputs}
        self._write()

    def forget(self, stage):
        """Drop ``stage``'s record (it is being redone)."""
        if self.stages.pop(stage, None) is not None:
            self._write()
