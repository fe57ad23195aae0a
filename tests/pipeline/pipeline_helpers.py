"""Tiny recipe overrides so a whole compress run takes seconds on digits."""

import json

TINY = {
    "data": {"pool_size": 900},
    "dense": {"epochs": 3},
    "evaluation": {"steps": 5, "max_examples": 100, "membership_attacks": ["threshold"], "masking_checks": False},
    "export": {"min_agreement": 0.9},
}

TINY_PARAMS = {
    "baseline": {"epochs": 1},
    "safecompress": {"epochs": 3, "update_every": 2, "attack_size": 50, "attack_epochs": 1},
    "atmc": {"epochs": 1, "steps": 2, "ratio": 0.2},
    "self_compress": {"epochs": 1, "safety_size": 30, "monitor_every": 3},
    "rlnet": {"teacher_epochs": 1, "search_epochs": 1, "finetune_epochs": 1, "pgd_steps": 2},
}


def tiny_config(method, path=None):
    """The tiny overrides for ``method`` (written to ``path`` as JSON when given)."""
    config = dict(TINY, params=TINY_PARAMS[method])
    if path is not None:
        path.write_text(json.dumps(config))
        return str(path)
    return config
