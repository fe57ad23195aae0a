"""The one contract every compression method follows: build, ``compress``, get a result.

A method is a :class:`CompressionMethod` subclass. Every hyper-parameter is a constructor
argument (checked there, with one-line :class:`~tfsafe.errors.InputError`\\ s) and stored as
an attribute of the same name, so ``get_config()`` / ``from_config()`` round-trip it and a
recipe's ``params`` are exactly the constructor's arguments. There is one verb::

    result = method.compress(model, splits, callbacks=(), checkpoint_dir=None, resume=False,
                             seed=0, verbose=1)

``splits`` is a :class:`~tfsafe.data.MembershipSplits`; a method reads only ``splits.train``
(the members it trains on) and ``splits.validation`` (model selection), plus
``splits.reference`` where it is not empty. ``splits.nonmembers`` and ``splits.test`` stay
untouched for the audit. The work is an ordered tuple of named ``stages``; with a
``checkpoint_dir`` every finished stage is saved there (its models as ``.keras`` files, its
JSON state), atomically, so ``resume=True`` after a kill skips the finished stages.

``callbacks`` may mix Keras callbacks (passed to every ``fit`` of the method) and
:class:`StageCallback`\\ s (told when a stage starts, is skipped or ends).

Example:
    >>> import tfsafe.methods
    >>> method = tfsafe.methods.get("safecompress", target_sparsity=0.8)
    >>> method.stages
    ('prune', 'train')
    >>> type(method).from_config(method.get_config()).get_config() == method.get_config()
    True
"""

import copy
import dataclasses
import inspect
import json
import os
import time

import numpy as np

from tfsafe._keras import keras, tfmot
from tfsafe.compress.strip import strip
from tfsafe.errors import InputError
from tfsafe.io import atomic_write_json, load_model, save_model, to_jsonable
from tfsafe.metrics import model_size
from tfsafe.safety.tests import SafetyTest, tests_from_config, tests_to_config
from tfsafe.validation import check_model, check_xy

__all__ = ["CompressionMethod", "CompressionResult", "DeployedModel", "StageCallback", "StageRun", "PROGRESS_FILE",
           "check_int", "check_number", "check_choice", "nonempty", "default_eps"]

PROGRESS_FILE = "progress.json"


class StageCallback:
    """Hooks on a method's stages (pass it in ``compress(callbacks=...)``).

    Raising in a hook aborts ``compress``; stages already finished stay checkpointed.
    """

    def on_stage_begin(self, method, stage):
        """Called before ``stage`` runs."""

    def on_stage_skip(self, method, stage):
        """Called instead when ``stage`` finished in an earlier run (resume)."""

    def on_stage_end(self, method, stage, seconds):
        """Called after ``stage`` finished and was checkpointed."""


@dataclasses.dataclass
class StageRun:
    """What the stages of one ``compress`` call share.

    Attributes:
        splits: the protocol splits (only ``train``, ``validation`` and ``reference`` are read).
        train: checked ``(x, y)`` of ``splits.train``.
        validation: checked ``(x, y)`` of ``splits.validation`` (may be empty).
        models: named Keras models; ``"model"`` is the current state of the compressed model.
            Every entry is checkpointed after each stage.
        state: JSON-able state every stage may add to; ``info``, ``history`` and ``selection``
            end up in the :class:`CompressionResult`.
        callbacks: the Keras callbacks for every ``fit``.
        checkpoint_dir: the method's checkpoint folder (or ``None``); a stage may keep its own
            finer checkpoints in ``stage_dir(name)``.
        resume, seed, verbose: as given to ``compress``.
    """

    splits: object
    train: tuple
    validation: tuple
    models: dict
    state: dict
    callbacks: list
    checkpoint_dir: str = None
    resume: bool = False
    seed: int = 0
    verbose: int = 1

    def stage_dir(self, stage):
        """Folder of ``stage``'s checkpoint (``None`` without a ``checkpoint_dir``)."""
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, stage)

    @property
    def selection_data(self):
        """``(x, y)`` that selection scores: validation, else the members when validation is empty."""
        return self.validation if nonempty(self.validation) else self.train

    @property
    def reference(self):
        """Non-members a method may train a simulated attacker on: ``splits.reference``, else validation.

        Falls back to the second half of the members when validation is empty too, so empty
        optional splits never fail (the attacker is then weaker: it sees members only).
        """
        reference = getattr(self.splits, "reference", None)
        if nonempty(reference):
            return tuple(reference)
        if nonempty(self.validation):
            return self.validation
        x, y = self.train
        return x[len(x) // 2:], y[len(y) // 2:]


class DeployedModel:
    """``stripped`` and ``audit`` for a result that holds a compressed ``model``."""

    @property
    def stripped(self):
        """Plain Keras model as deployed (``strip(model)``, computed on first use)."""
        if getattr(self, "_stripped", None) is None:
            self._stripped = strip(self.model)
        return self._stripped

    def audit(self, splits, size=None, attacks=None, seed=0):
        """tensorflow-privacy audit of ``stripped``: balanced members vs. the untouched audit non-members."""
        # Imported here: tensorflow-privacy is slow to import and only audits need it.
        from tfsafe.safety.membership import audit_membership
        members, nonmembers = splits.audit_sets(size=size, seed=seed)
        return audit_membership(self.stripped, members, nonmembers, attacks=attacks, seed=seed)


class CompressionResult(DeployedModel):
    """What every method's ``compress`` returns.

    Attributes:
        model: the compressed model in the method's own form (wrappers, masks, factors,
            learned bits): what size is measured on.
        history: per stage, what it trained (Keras ``History.history`` or rounds), JSON-able.
        selection: how the returned state was chosen: the ``tests`` (names and weights), the
            ``checks`` made, which state was ``kept`` and ``early`` (True when an earlier state
            than the last one was returned).
        info: method-specific summary (budget, ReLU count, size...), JSON-able.
        config: the method's ``get_config()``.
        seconds: wall time of all stages (those of an interrupted earlier run included).
        method: the registry name of the method.
        extras: other models the method produced (e.g. RLNet's teacher).
    """

    def __init__(self, model, history, selection, info, config, seconds, method, extras=None):
        self.model = model
        self.history = history
        self.selection = selection
        self.info = info
        self.config = config
        self.seconds = float(seconds)
        self.method = method
        self.extras = dict(extras or {})
        self._stripped = None

    def to_dict(self):
        """JSON-able summary: method, config, info, selection, seconds, size and history."""
        return to_jsonable({"method": self.method, "config": self.config, "info": self.info,
                            "selection": self.selection, "seconds": round(self.seconds, 3),
                            "size": model_size(self.model), "history": self.history})

    def __repr__(self):
        kept = (self.selection or {}).get("kept")
        return (f"CompressionResult(method={self.method!r}, model={getattr(self.model, 'name', '?')!r}, "
                f"kept={kept!r}, seconds={self.seconds:.1f}, info keys={sorted(self.info)})")


def _split_callbacks(callbacks):
    stage_cbs, keras_cbs = [], []
    for cb in callbacks or ():
        if isinstance(cb, StageCallback):
            stage_cbs.append(cb)
        elif isinstance(cb, keras.callbacks.Callback):
            keras_cbs.append(cb)
        else:
            raise InputError(f"callbacks must be Keras callbacks or tfsafe.methods.StageCallback, got "
                             f"{type(cb).__name__}.")
    return stage_cbs, keras_cbs


class CompressionMethod:
    """Base class of the compression methods (see the module docstring for the contract).

    Subclasses set ``name`` (registry name) and ``stages`` (names), implement
    ``_stage_<name>(run)`` for each stage and ``_result(run) -> (model, info, extras)``, and
    store every constructor argument as an attribute of the same name.
    """

    name = "method"
    stages = ()
    role = "compressed"  # how reports label the result (the TF-MOT baseline: "unsafe baseline")

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def _parameters(cls):
        return [n for n, p in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    @classmethod
    def parameter_names(cls):
        """The constructor's argument names (what a recipe's ``params`` may hold)."""
        return tuple(cls._parameters())

    def get_config(self):
        """The constructor's arguments as JSON-able values (safety tests as their configs)."""
        config = {}
        for key in self._parameters():
            value = getattr(self, key)
            if key == "tests" and value is not None:
                config[key] = tests_to_config(value)
            else:
                config[key] = to_jsonable(copy.deepcopy(value))
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuild a method from :meth:`get_config`'s output."""
        config = dict(config)
        unknown = sorted(set(config) - set(cls._parameters()))
        if unknown:
            raise InputError(f"Unknown {cls.name} parameters: {', '.join(unknown)}; it takes "
                             f"{', '.join(cls._parameters())}.")
        if config.get("tests") is not None:
            config["tests"] = tests_from_config(config["tests"])
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- the verb ------------------------------------------------------------------------------

    def compress(self, model, splits, *, callbacks=(), checkpoint_dir=None, resume=False, seed=0, verbose=1):
        """Compress ``model`` on ``splits``; returns a :class:`CompressionResult`.

        Args:
            model: a trained Keras classifier (logits or softmax output; Keras 3 models are
                converted). It is not modified.
            splits: a :class:`~tfsafe.data.MembershipSplits`. Only ``train``, ``validation``
                and a non-empty ``reference`` are read.
            callbacks: Keras callbacks (for every ``fit``) and :class:`StageCallback`\\ s.
            checkpoint_dir: folder where every finished stage is saved atomically.
            resume: continue the run in ``checkpoint_dir``: finished stages are loaded.
            seed: seeds TensorFlow, NumPy and the method's random draws.
            verbose: Keras verbosity (0 quiet, 1 progress bars).

        Raises:
            InputError: ``splits`` is not a MembershipSplits, bad data, or a resume with
                another configuration than the checkpoint's.
        """
        if not all(hasattr(splits, name) for name in ("train", "validation", "nonmembers", "test")):
            raise InputError(f"splits must be a tfsafe.data.MembershipSplits (see tfsafe.membership_split), "
                             f"got {type(splits).__name__}.")
        stage_cbs, keras_cbs = _split_callbacks(callbacks)
        model = check_model(model)
        train = check_xy(model, *splits.train, name="train")
        validation = splits.validation
        if nonempty(validation):
            validation = check_xy(model, *validation, name="validation")
        else:  # an empty validation split: selection falls back to the members (see each method)
            validation = (train[0][:0], train[1][:0])
        run = StageRun(splits=splits, train=train, validation=validation, models={"input": model},
                       state={"info": {}, "history": {}, "selection": {}, "seconds": {}}, callbacks=keras_cbs,
                       checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
                       resume=bool(resume), seed=int(seed), verbose=int(verbose))
        done = self._load_progress(run) if resume and checkpoint_dir else []
        if checkpoint_dir and not done:
            os.makedirs(checkpoint_dir, exist_ok=True)
        for stage in self.stages:
            if stage in done:
                for cb in stage_cbs:
                    cb.on_stage_skip(self, stage)
                continue
            for cb in stage_cbs:
                cb.on_stage_begin(self, stage)
            keras.utils.set_random_seed(run.seed)  # every stage starts from the seed: a resume repeats it
            started = time.perf_counter()
            getattr(self, f"_stage_{stage}")(run)
            run.state["seconds"][stage] = round(time.perf_counter() - started, 3)
            done.append(stage)
            if checkpoint_dir:
                self._save_stage(run, stage, done)
            for cb in stage_cbs:
                cb.on_stage_end(self, stage, run.state["seconds"][stage])
        model, info, extras = self._result(run)
        run.state["info"].update(info)
        return CompressionResult(model=model, history=run.state["history"], selection=run.state["selection"],
                                 info=json.loads(json.dumps(to_jsonable(run.state["info"]))),
                                 config=self.get_config(), seconds=sum(run.state["seconds"].values()),
                                 method=self.name, extras=extras)

    def _result(self, run):
        return run.models["model"], {}, {}

    # -- checkpoints ---------------------------------------------------------------------------

    def _fingerprint(self, run):
        return {"method": self.name, "config": json.loads(json.dumps(self.get_config())), "seed": run.seed}

    def _save_stage(self, run, stage, done):
        folder = run.stage_dir(stage)
        names = {}
        for key, model in run.models.items():
            if key != "input":
                names[key] = os.path.basename(save_model(model, os.path.join(folder, f"{key}.keras")))
        atomic_write_json(os.path.join(folder, "state.json"), {"models": names, "state": run.state})
        atomic_write_json(os.path.join(run.checkpoint_dir, PROGRESS_FILE),
                          dict(self._fingerprint(run), done=list(done)))

    def _load_progress(self, run):
        path = os.path.join(run.checkpoint_dir, PROGRESS_FILE)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            progress = json.load(f)
        fingerprint = self._fingerprint(run)
        if {k: progress.get(k) for k in fingerprint} != fingerprint:
            changed = sorted(k for k in fingerprint["config"]
                             if progress.get("config", {}).get(k) != fingerprint["config"][k])
            raise InputError(f"resume=True but '{run.checkpoint_dir}' holds a {progress.get('method')} run with "
                             f"other settings (differs in: {', '.join(changed) or 'method/seed'}); use another "
                             "checkpoint_dir or resume=False.")
        done = [s for s in self.stages if s in progress.get("done", [])]
        if done:
            with open(os.path.join(run.stage_dir(done[-1]), "state.json"), encoding="utf-8") as f:
                saved = json.load(f)
            run.state = saved["state"]
            # TF-MOT's pruning wrappers deserialize only inside prune_scope (a method may checkpoint them).
            with tfmot.sparsity.keras.prune_scope():
                for key, filename in saved["models"].items():
                    run.models[key] = load_model(os.path.join(run.stage_dir(done[-1]), filename))
        return done

    # -- helpers for subclasses ----------------------------------------------------------------

    def _selection_tests(self, tests):
        """``[(SafetyTest, weight), ...]`` from a list of tests or ``(test, weight)`` pairs."""
        pairs = []
        for item in tests or ():
            test, weight = item if isinstance(item, (tuple, list)) else (item, 1.0)
            if not isinstance(test, SafetyTest):
                raise InputError(f"{self.name}: tests must be tfsafe.safety.tests.SafetyTest objects or "
                                 f"(test, weight) pairs, got {type(test).__name__}.")
            if not float(weight) >= 0:
                raise InputError(f"{self.name}: the weight of test '{test.name}' must be >= 0, got {weight}.")
            pairs.append((test, float(weight)))
        return pairs


# -- argument checks shared by the constructors (one-line errors) --------------------------------


def check_int(value, name, minimum=1):
    """``value`` as an int ``>= minimum``, else :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_number(value, name, minimum=0.0, strict=False):
    """``value`` as a float ``>= minimum`` (``> minimum`` when ``strict``), else :class:`InputError`."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a number, got {value!r}.") from err
    if number != number or number < minimum or (strict and number == minimum):
        raise InputError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}.")
    return number


def check_choice(value, name, choices):
    """``value`` if it is one of ``choices``, else :class:`InputError`."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}.")
    return value


def nonempty(pair):
    """Whether ``pair`` is an ``(x, y)`` with at least one example (``()`` and ``None`` are empty)."""
    return pair is not None and len(pair) == 2 and len(pair[0]) > 0


def default_eps(x):
    """The training radius when a method's ``eps`` is ``None``, from the data: Linf, scaled to its range.

    RGB inputs (3 channels) get ``8/255`` of the value range (CIFAR-10's usual radius), other
    inputs ``0.1`` of it (digits' and Fashion-MNIST's; pass ``eps=0.3`` for MNIST, as the
    pipeline does from :data:`tfsafe.safety.evaluate.DATASET_EPS`).

    Example:
        >>> import numpy as np
        >>> default_eps(np.zeros((2, 8, 8, 1)) + np.arange(2).reshape(2, 1, 1, 1))
        0.1
    """
    x = np.asarray(x, np.float32)
    span = float(x.max() - x.min()) if x.size else 1.0
    span = span if span > 0 else 1.0
    return round((8 / 255 if x.ndim == 4 and x.shape[-1] == 3 else 0.1) * span, 6)
