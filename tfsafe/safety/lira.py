"""LiRA and offset membership scores from reference (shadow) models, trainable in shards.

The likelihood-ratio attack (Carlini et al., 2022) asks, for every audit example, how the
target model's confidence compares with the confidences of reference models that did
(IN) and did not (OUT) train on that example. tensorflow-privacy supplies the statistics
and the scores (``advanced_mia.calculate_statistic``, ``compute_score_lira``,
``compute_score_offset``); this module trains the reference models and merges their
statistics.

Reference models are independent jobs. :func:`train_reference_models` trains the ones of
one shard (``shard=(i, n)`` trains models ``j`` with ``j % n == i``) and writes one ``.npz``
per model into a shared folder, skipping models already there, so shards run on separate
workers and an interrupted run resumes where it stopped. :func:`lira_audit` merges every
file it finds.

Example:
    >>> # pool = members + non-members of the target audit, is_member marks the members
    >>> # train_reference_models(build_fn, pool, "refs", num_models=16, shard=(0, 4))  # worker 0
    >>> # audit = lira_audit(target, pool, is_member, "refs")
"""

import glob
import hashlib
import os

import numpy as np

from tfsafe.errors import InputError
from tfsafe.io import atomic_path

__all__ = ["pool_fingerprint", "train_reference_models", "load_reference_stats", "lira_audit"]


def pool_fingerprint(x, y):
    """A short hash of the audit pool, stored with every reference model to catch mix-ups."""
    digest = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, np.int64).tobytes())
    return digest.hexdigest()[:16]


def _advanced_mia():
    from tfsafe.safety.membership import _tf_privacy  # noqa: PLC0415

    _tf_privacy()  # sets tensorflow-privacy's import switch and checks it is installed
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import advanced_mia  # noqa: PLC0415

    return advanced_mia


def _statistic(logits, labels):
    # The hinge (true-class logit minus the best other logit) is LiRA's most Gaussian statistic.
    return _advanced_mia().calculate_statistic(logits, labels, is_logits=True, option="hinge")


def _parse_shard(shard):
    if isinstance(shard, str):
        try:
            index, count = (int(v) for v in shard.split("/"))
        except ValueError as err:
            raise InputError(f"shard must look like 'i/n' (e.g. 0/4), got {shard!r}.") from err
    else:
        index, count = shard
    if count < 1 or not 0 <= index < count:
        raise InputError(f"shard {index}/{count} is invalid: need 0 <= i < n.")
    return index, count


def _build(template_or_fn):
    from tfsafe._keras import keras  # noqa: PLC0415

    if isinstance(template_or_fn, keras.Model):
        from tfsafe.models import compile_classifier  # noqa: PLC0415

        # Same architecture, fresh weights.
        return compile_classifier(keras.models.clone_model(template_or_fn), learning_rate=1e-3)
    if callable(template_or_fn):
        return template_or_fn()
    raise InputError("build_fn must be a Keras model (its architecture is reused) or a function returning a "
                     "compiled model.")


def train_reference_models(build_fn, pool, out_dir, num_models=8, shard=(0, 1), seed=0, fit_kwargs=None,
                           log=print):
    """Train this shard's reference models, each on a random half of ``pool``.

    Args:
        build_fn: a function returning a compiled, untrained model, or a Keras model whose
            architecture is cloned (compiled with Adam and cross-entropy).
        pool: ``(x, y)``: the examples to audit (target members and non-members together).
        out_dir: shared folder for ``ref_<j>.npz`` files (one per model).
        num_models: total reference models across all shards (LiRA wants 16+; 4 is a floor).
        shard: ``(i, n)`` or ``"i/n"``: train models ``j`` with ``j % n == i``.
        seed: seeds the IN/OUT halves; models ``2k`` and ``2k + 1`` train on complementary
            halves, so every example has ``num_models // 2`` IN and OUT models.
        fit_kwargs: passed to ``model.fit`` (epochs, batch_size...).

    Returns:
        Paths of this shard's files (existing ones are kept, not retrained).
    """
    from tfsafe._keras import keras  # noqa: PLC0415
    from tfsafe.models import predict_logits  # noqa: PLC0415
    from tfsafe.validation import check_features, check_labels  # noqa: PLC0415

    x, y = pool
    x = check_features(x, "pool x")
    y = check_labels(y, name="pool y", n=len(x))
    index, count = _parse_shard(shard)
    if num_models < 2:
        raise InputError(f"num_models must be >= 2 (LiRA needs IN and OUT models), got {num_models}.")
    os.makedirs(out_dir, exist_ok=True)
    fingerprint = pool_fingerprint(x, y)
    fit_kwargs = {"epochs": 20, "batch_size": 32, "verbose": 0, **(fit_kwargs or {})}
    paths = []
    for j in range(index, num_models, count):
        path = os.path.join(out_dir, f"ref_{j:04d}.npz")
        paths.append(path)
        if os.path.exists(path):
            log(f"reference model {j}: already trained, skipping")
            continue
        # Models come in complementary pairs (2k, 2k+1), so every example has as many IN as OUT
        # reference models.
        in_mask = np.zeros(len(x), bool)
        in_mask[np.random.default_rng(seed + j // 2).permutation(len(x))[: len(x) // 2]] = True
        if j % 2:
            in_mask = ~in_mask
        keras.utils.set_random_seed(seed + j)
        model = _build(build_fn)
        model.fit(x[in_mask], y[in_mask], **fit_kwargs)
        stat = _statistic(predict_logits(model, x), y)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, in_mask=in_mask, stat=stat, fingerprint=fingerprint, index=j)
        log(f"reference model {j}: trained on {in_mask.sum()} examples")
    return paths


def load_reference_stats(out_dir, pool):
    """Merge every shard's files: ``(in_masks, stats)`` of shape (models, examples)."""
    x, y = pool
    fingerprint = pool_fingerprint(x, y)
    files = sorted(glob.glob(os.path.join(out_dir, "ref_*.npz")))
    if len(files) < 2:
        raise InputError(f"Found {len(files)} reference models in '{out_dir}'; train at least 2 with "
                         "train_reference_models (or tfsafe audit --reference_models).")
    masks, stats = [], []
    for path in files:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint:
                raise InputError(f"'{path}' was trained for a different audit pool; use a separate folder "
                                 "per pool.")
            masks.append(data["in_mask"])
            stats.append(data["stat"])
    return np.stack(masks), np.stack(stats)


def lira_audit(model, pool, is_member, reference_dir, min_models_per_side=1):
    """Score every pool example with LiRA and the offset attack, then measure how well the
    scores separate the target's members from its non-members.

    Args:
        model: the target Keras model (or anything ``audit_membership`` accepts).
        pool: ``(x, y)`` the reference models were trained on halves of.
        is_member: boolean array: which pool examples the target trained on.
        reference_dir: folder written by :func:`train_reference_models` (all shards).

    Returns:
        A :class:`tfsafe.safety.membership.MembershipAudit` with attacks ``lira`` and ``offset``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve  # noqa: PLC0415

    from tfsafe.safety.membership import METRICS, MembershipAudit, _model_outputs, tpr_at_fpr  # noqa: PLC0415
    from tfsafe.validation import check_features, check_labels  # noqa: PLC0415

    advanced_mia = _advanced_mia()
    x, y = pool
    x = check_features(x, "pool x")
    y = check_labels(y, name="pool y", n=len(x))
    is_member = np.asarray(is_member, bool)
    if is_member.shape != (len(x),) or is_member.all() or not is_member.any():
        raise InputError("is_member must be a boolean vector over the pool with both members and non-members.")
    in_masks, stats = load_reference_stats(reference_dir, (x, y))
    if in_masks.sum(0).min() < min_models_per_side or (~in_masks).sum(0).min() < min_models_per_side:
        raise InputError("Some pool examples have no IN or no OUT reference model; train more reference models.")
    outputs, kind = _model_outputs(model, x, 512)
    if kind != "logits":
        outputs = np.log(np.clip(outputs, 1e-12, 1.0))  # log-probabilities: same hinge statistic
    target = _statistic(outputs, y)[:, None]
    stat_in = [stats[in_masks[:, i], i][:, None] for i in range(len(x))]
    stat_out = [stats[~in_masks[:, i], i][:, None] for i in range(len(x))]
    scores = {
        # compute_score_* return low values for members; negate so higher = more likely member.
        "lira": -advanced_mia.compute_score_lira(target, stat_in, stat_out, option="both"),
        "offset": advanced_mia.compute_score_offset(target, stat_in, stat_out, option="out"),
    }
    rows = []
    for name, score in scores.items():
        fpr, tpr, _ = roc_curve(is_member, score)
        rows.append({"attack": name, "auc": float(roc_auc_score(is_member, score)),
                     "advantage": float(np.max(tpr - fpr)), "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
                     "tpr_at_01pct_fpr": tpr_at_fpr(fpr, tpr, 0.001), "fpr": fpr.tolist(), "tpr": tpr.tolist()})
    worst = {metric: max(r[metric] for r in rows) for metric in METRICS}
    worst["attack"] = max(rows, key=lambda r: r["auc"])["attack"]
    return MembershipAudit(attacks=rows, worst=worst, n_members=int(is_member.sum()),
                           n_nonmembers=int((~is_member).sum()))
