"""Reference models trained in shards, and the likelihood-ratio attack (LiRA) on them.

LiRA (Carlini, Chien, Nasr, Song, Terzis, Tramer, "Membership Inference Attacks From First
Principles", IEEE S&P 2022) asks, for every audit example ``(x, y)``, how the target model's
logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` compares with the confidences of
reference (shadow) models that did (IN) and did not (OUT) train on ``(x, y)``:

- **online**: fit one Gaussian to the IN and one to the OUT confidences of the example;
  the score is the log-likelihood ratio ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)``.
- **offline**: OUT models only; the one-sided test ``Pr[Z < phi]``, ``Z ~ N(mu_out, s_out)``
  (ranked by ``(phi - mu_out) / s_out``, which orders examples the same way without
  saturating at 1).
- **global variance**: with few reference models per-example variances are noise; then one
  IN and one OUT standard deviation over all examples' confidences (as the paper's code
  does) replaces them. ``global_variance=None`` chooses it below
  :data:`GLOBAL_VARIANCE_BELOW` models per side.

``phi`` is computed from logits without forming ``p_y``: ``z_y - logsumexp_{j != y} z_j``
(exact, no overflow, no ``1 - p`` cancellation); probability outputs are first taken to logs.

Reference models are independent jobs. :func:`train_reference_models` trains the ones of
one shard (``shard=(i, n)`` trains models ``j`` with ``j % n == i``), each on a random half of
the pool (models ``2k`` and ``2k + 1`` on complementary halves, so every example has as many
IN as OUT models), or on halves of a separate population (``train_on="population"``: OUT
for every pool example, the offline setting), and writes one ``ref_<j>.npz`` with the
model's logits on the pool (and population) into a shared folder. Existing files are
skipped, so shards run on separate workers and an interrupted run resumes.
:func:`load_reference_models` merges every file; RMIA (:mod:`tfsafe.safety.rmia`) reads the
same files.

**Augmented queries** (Carlini et al. 2022, Sec. VI-B): with ``augmentations=("flip",)`` every
example is also queried horizontally flipped. The reference files then store each model's
logits on the flipped pool too; LiRA fits one Gaussian pair per query and sums the per-query
log-likelihood ratios (online; the queries treated as independent, as the paper's code does)
or averages the per-query standardized offsets (offline).

Example:
    >>> # pool = members + non-members of the target audit, is_member marks the members
    >>> # train_reference_models(build_fn, pool, "refs", num_models=16, shard=(0, 4))  # worker 0
    >>> # audit = lira_audit(target, pool, is_member, "refs")
"""

import dataclasses
import glob
import hashlib
import os

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

from tfsafe._keras import keras
from tfsafe.errors import InputError
from tfsafe.io import atomic_path
from tfsafe.models import compile_classifier, predict_logits
from tfsafe.safety.membership import MembershipAudit, _model_outputs
from tfsafe.safety.roc import roc_row, worst_case
from tfsafe.validation import check_features, check_labels

__all__ = ["AUGMENTATIONS", "GLOBAL_VARIANCE_BELOW", "ReferenceModels", "as_logits", "augment_queries",
           "check_audit_pool", "lira_audit", "lira_scores", "load_reference_models", "logit_confidence",
           "pool_fingerprint", "target_logits", "train_reference_models"]

FILE_FORMAT = 2  # 1 stored only the hinge statistic; 2 stores the logits (LiRA and RMIA)
# Carlini et al. fix the variance for small budgets: per-example variances from fewer models
# than this per side are too noisy.
GLOBAL_VARIANCE_BELOW = 32


def _flip(x):
    if x.ndim != 4:
        raise InputError(f"the 'flip' query augmentation needs images (n, height, width, channels), got inputs of "
                         f"shape {x.shape}; leave augmentations empty for non-image data.")
    return x[:, :, ::-1, :]


# Query augmentations: name -> function of a batch of inputs.
AUGMENTATIONS = {"flip": _flip}


def augment_queries(x, augmentations=()):
    """The inputs LiRA queries: ``x`` itself, then each augmentation of it, in order.

    Args:
        x: the inputs, ``(n, ...)``.
        augmentations: names from :data:`AUGMENTATIONS` (``"flip"``: horizontal flip of
            NHWC images).

    Returns:
        A list of ``1 + len(augmentations)`` arrays shaped like ``x``.

    Raises:
        InputError: an unknown name, or ``"flip"`` on inputs that are not images.
    """
    unknown = [a for a in augmentations if a not in AUGMENTATIONS]
    if unknown:
        raise InputError(f"unknown query augmentation(s) {unknown}; choose from {sorted(AUGMENTATIONS)}.")
    x = np.asarray(x)
    return [x] + [AUGMENTATIONS[a](x) for a in augmentations]


def pool_fingerprint(x, y, population=None):
    """A short hash of the audit pool (and population), stored with every reference model."""
    digest = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, np.int64).tobytes())
    if population is not None:
        digest.update(b"population")
        digest.update(np.ascontiguousarray(population[0], np.float32).tobytes())
        digest.update(np.ascontiguousarray(population[1], np.int64).tobytes())
    return digest.hexdigest()[:16]


def as_logits(outputs, kind):
    """Outputs as logits: probabilities become their logs (a zero floored at 1e-30)."""
    outputs = np.asarray(outputs, np.float64)
    return np.log(np.maximum(outputs, 1e-30)) if kind == "probabilities" else outputs


def logit_confidence(logits, labels):
    """LiRA's statistic ``log(p_y / (1 - p_y))`` from logits, computed stably.

    Args:
        logits: ``(..., n, classes)`` logits (any additive constant per row cancels).
        labels: ``(n,)`` integer labels.

    Returns:
        float64 ``(..., n)``: ``z_y - logsumexp_{j != y} z_j``.
    """
    z = np.asarray(logits, np.float64)
    index = np.broadcast_to(np.asarray(labels, np.int64)[:, None], z.shape[:-1] + (1,))
    true = np.take_along_axis(z, index, axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, index, -np.inf, axis=-1)
    return true - logsumexp(others, axis=-1)


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
    if isinstance(template_or_fn, keras.Model):
        # Same architecture, fresh weights.
        return compile_classifier(keras.models.clone_model(template_or_fn), learning_rate=1e-3)
    if callable(template_or_fn):
        return template_or_fn()
    raise InputError("build_fn must be a Keras model (its architecture is reused) or a function returning a "
                     "compiled model.")


def _check_xy(data, name, feature_shape=None):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InputError(f"{name} must be a pair (x, y).")
    x = check_features(data[0], f"{name} x", feature_shape)
    return x, check_labels(data[1], name=f"{name} y", n=len(x))


def _half(n, seed, j):
    # Models 2k and 2k + 1 train on complementary halves.
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed + j // 2).permutation(n)[: n // 2]] = True
    return ~mask if j % 2 else mask


def train_reference_models(build_fn, pool, out_dir, num_models=8, shard=(0, 1), seed=0, fit_kwargs=None,
                           population=None, train_on="pool", augmentations=(), log=print):
    """Train this shard's reference models and store their logits.

    Args:
        build_fn: a function returning a compiled, untrained model, or a Keras model whose
            architecture is cloned (compiled with Adam and cross-entropy).
        pool: ``(x, y)``: the examples to audit (target members and non-members together).
        out_dir: shared folder for ``ref_<j>.npz`` files (one per model).
        num_models: total reference models across all shards. LiRA wants 16+ (IN and OUT
            per example: ``train_on="pool"`` needs 2+); RMIA works from 1.
        shard: ``(i, n)`` or ``"i/n"``: train models ``j`` with ``j % n == i``.
        seed: seeds the halves (and each model's initialization).
        fit_kwargs: passed to ``model.fit`` (epochs, batch_size...).
        population: optional ``(x, y)`` from the same distribution, never audited: RMIA's
            population samples ``z``, and the training data when ``train_on="population"``.
        train_on: ``"pool"`` (random halves of the pool: online LiRA / RMIA) or
            ``"population"`` (random halves of ``population``: every pool example is OUT,
            the offline setting).
        augmentations: query augmentations (see :func:`augment_queries`) whose pool logits
            are stored too, for ``lira_audit(..., augmentations=...)``.
        log: called with one line per model.

    Returns:
        Paths of this shard's files (existing ones are kept, not retrained).

    Raises:
        InputError: bad shard, too few models, missing population, mismatched shapes.
    """
    x, y = _check_xy(pool, "pool")
    if population is not None:
        population = _check_xy(population, "population", x.shape[1:])
    augmented = augment_queries(x, augmentations)[1:]
    index, count = _parse_shard(shard)
    if train_on not in ("pool", "population"):
        raise InputError(f"train_on must be 'pool' or 'population', got {train_on!r}.")
    if train_on == "population" and population is None:
        raise InputError("train_on='population' needs population=(x, y): data the target never saw, not in the pool.")
    if num_models < (2 if train_on == "pool" else 1):
        raise InputError(f"num_models must be >= 2 when training on pool halves (every example needs an IN and "
                         f"an OUT model), got {num_models}; or train on a population (offline).")
    os.makedirs(out_dir, exist_ok=True)
    fingerprint = pool_fingerprint(x, y, population)
    fit_kwargs = {"epochs": 20, "batch_size": 32, "verbose": 0, **(fit_kwargs or {})}
    paths = []
    for j in range(index, num_models, count):
        path = os.path.join(out_dir, f"ref_{j:04d}.npz")
        paths.append(path)
        if os.path.exists(path):
            log(f"reference model {j}: already trained, skipping")
            continue
        m = 0 if population is None else len(population[0])
        if train_on == "pool":
            in_mask, pop_in = _half(len(x), seed, j), np.zeros(m, bool)
            train_x, train_y = x[in_mask], y[in_mask]
        else:
            in_mask, pop_in = np.zeros(len(x), bool), _half(m, seed, j)
            train_x, train_y = population[0][pop_in], population[1][pop_in]
        keras.utils.set_random_seed(seed + j)
        model = _build(build_fn)
        model.fit(train_x, train_y, **fit_kwargs)
        logits = predict_logits(model, x)
        pop_logits = predict_logits(model, population[0]) if population is not None else np.zeros((0, 0))
        aug_logits = {f"aug_logits_{name}": predict_logits(model, xa) for name, xa in zip(augmentations, augmented)}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, in_mask=in_mask, logits=logits, pop_in_mask=pop_in, pop_logits=pop_logits,
                         fingerprint=fingerprint, index=j, format=FILE_FORMAT, **aug_logits)
        log(f"reference model {j}: trained on {len(train_x)} {train_on} examples")
    return paths


@dataclasses.dataclass
class ReferenceModels:
    """Every reference model's logits, merged from all shards.

    Attributes:
        in_mask: bool ``(models, n)``: model trained on pool example.
        logits: float32 ``(models, n, classes)`` on the pool.
        pop_in_mask: bool ``(models, m)`` and pop_logits ``(models, m, classes)`` on the
            population (``m = 0`` without one).
        aug_logits: ``{augmentation: (models, n, classes)}`` on the augmented pool (the ones
            asked for when loading).
    """

    in_mask: np.ndarray
    logits: np.ndarray
    pop_in_mask: np.ndarray
    pop_logits: np.ndarray
    aug_logits: dict = dataclasses.field(default_factory=dict)

    @property
    def num_models(self):
        return len(self.in_mask)

    def counts(self):
        """IN / OUT reference models per pool example (min and median) and the total."""
        n_in, n_out = self.in_mask.sum(0), (~self.in_mask).sum(0)
        return {"total": self.num_models, "in_min": int(n_in.min()), "in_median": float(np.median(n_in)),
                "out_min": int(n_out.min()), "out_median": float(np.median(n_out))}


def load_reference_models(out_dir, pool, population=None, augmentations=()):
    """Merge every shard's ``ref_*.npz`` in ``out_dir`` into a :class:`ReferenceModels`
    (with the logits of the query ``augmentations`` asked for).

    Raises:
        InputError: no files, files for another pool / population, files of an older format,
            or files without an augmentation asked for.
    """
    x, y = pool
    fingerprint = pool_fingerprint(x, y, population)
    files = sorted(glob.glob(os.path.join(os.fspath(out_dir), "ref_*.npz")))
    if not files:
        raise InputError(f"Found 0 reference models in '{out_dir}'; train them with train_reference_models "
                         "(or tfsafe audit --reference_models).")
    parts = {"in_mask": [], "logits": [], "pop_in_mask": [], "pop_logits": []}
    parts.update({f"aug_logits_{name}": [] for name in augmentations})
    for path in files:
        with np.load(path, allow_pickle=False) as data:
            if "logits" not in data:
                raise InputError(f"'{path}' was written by an older tfsafe (statistics only); delete "
                                 f"'{out_dir}' and train the reference models again.")
            if str(data["fingerprint"]) != fingerprint:
                raise InputError(f"'{path}' was trained for a different audit pool or population; use a "
                                 "separate folder per pool, and pass the same population it was trained with.")
            missing = [name for name in augmentations if f"aug_logits_{name}" not in data]
            if missing:
                raise InputError(f"'{path}' has no logits for the query augmentation(s) {missing}; train the "
                                 f"reference models with augmentations={list(augmentations)} (in a new folder).")
            for key, values in parts.items():
                values.append(data[key])
    stacked = {key: np.stack(values) for key, values in parts.items()}
    aug = {name: stacked.pop(f"aug_logits_{name}") for name in augmentations}
    return ReferenceModels(**stacked, aug_logits=aug)


def check_audit_pool(pool, is_member, population=None):
    """Validated ``(x, y), is_member, population`` of an audit over reference models."""
    x, y = _check_xy(pool, "pool")
    is_member = np.asarray(is_member)
    if is_member.dtype != bool or is_member.shape != (len(x),):
        raise InputError(f"is_member must be a boolean vector of length {len(x)} (one per pool example), "
                         f"got {is_member.dtype} {is_member.shape}.")
    if is_member.all() or not is_member.any():
        raise InputError("is_member must mark both members and non-members of the target.")
    if population is not None:
        population = _check_xy(population, "population", x.shape[1:])
    return (x, y), is_member, population


def target_logits(model, x, batch_size=512, output=None):
    """The target's outputs on ``x`` as ``(n, classes)`` logits (probabilities taken to logs)."""
    outputs, kind = _model_outputs(model, x, batch_size, output)
    return as_logits(outputs, kind)


def _masked_mean_std(values, mask):
    count = mask.sum(0)
    mean = np.where(mask, values, 0.0).sum(0) / np.maximum(count, 1)
    var = np.where(mask, (values - mean) ** 2, 0.0).sum(0) / np.maximum(count, 1)
    return mean, np.sqrt(var)


def lira_scores(target_phi, ref_phi, in_mask, mode="online", global_variance=None):
    """LiRA membership scores (higher = more likely a member).

    Args:
        target_phi: ``(n,)`` the target's logit-scaled confidences, or ``(queries, n)`` with
            augmented queries (see :func:`augment_queries`).
        ref_phi: ``(models, n)`` the reference models' confidences (``(models, queries, n)``
            with augmented queries: one Gaussian pair per query; online sums the per-query
            log-likelihood ratios, offline averages the per-query offsets).
        in_mask: bool ``(models, n)``: which reference models trained on each example.
        mode: ``"online"`` (IN and OUT Gaussians, likelihood ratio) or ``"offline"`` (OUT
            only, one-sided test).
        global_variance: one standard deviation per side over all confidences; ``None``
            chooses it when any example has fewer than :data:`GLOBAL_VARIANCE_BELOW` models
            on a side it uses.

    Returns:
        ``(scores, global_variance_used)``.

    Raises:
        InputError: an example without the reference models ``mode`` needs.
    """
    target_phi, ref_phi, in_mask = np.asarray(target_phi), np.asarray(ref_phi), np.asarray(in_mask, bool)
    if target_phi.ndim == 2:
        if ref_phi.ndim != 3 or ref_phi.shape[1:] != target_phi.shape:
            raise InputError(f"augmented LiRA needs reference confidences (models, {target_phi.shape[0]}, "
                             f"{target_phi.shape[1]}) for target confidences {target_phi.shape}, got {ref_phi.shape}.")
        per_query = [lira_scores(phi, ref_phi[:, q], in_mask, mode, global_variance)
                     for q, phi in enumerate(target_phi)]
        combine = np.sum if mode == "online" else np.mean
        return combine([scores for scores, _ in per_query], axis=0), per_query[0][1]
    out_mask = ~in_mask
    n_in, n_out = in_mask.sum(0), out_mask.sum(0)
    if mode not in ("online", "offline"):
        raise InputError(f"LiRA mode must be 'online' or 'offline', got {mode!r}.")
    if n_out.min() < 1 or (mode == "online" and n_in.min() < 1):
        missing = int(((n_out < 1) | ((n_in < 1) & (mode == "online"))).sum())
        raise InputError(f"{missing} pool examples have no {'IN or ' if mode == 'online' else ''}OUT reference "
                         f"model for {mode} LiRA; train more reference models.")
    fewest = min(n_out.min(), n_in.min()) if mode == "online" else n_out.min()
    if global_variance is None:
        global_variance = bool(fewest < GLOBAL_VARIANCE_BELOW)
    mu_out, sd_out = _masked_mean_std(ref_phi, out_mask)
    if global_variance:
        sd_out = np.full_like(mu_out, np.std(ref_phi[out_mask]))
    sd_out = sd_out + 1e-30
    if mode == "offline":
        return (target_phi - mu_out) / sd_out, global_variance
    mu_in, sd_in = _masked_mean_std(ref_phi, in_mask)
    if global_variance:
        sd_in = np.full_like(mu_in, np.std(ref_phi[in_mask]))
    sd_in = sd_in + 1e-30
    return norm.logpdf(target_phi, mu_in, sd_in) - norm.logpdf(target_phi, mu_out, sd_out), global_variance


def lira_audit(model, pool, is_member, reference_dir, modes=("online", "offline"), global_variance=None,
               population=None, output=None, batch_size=512, augmentations=()):
    """Score every pool example with LiRA, then measure how well the scores separate the
    target's members from its non-members.

    Args:
        model: the target: a Keras model, ``.tflite`` path or callable (see
            :func:`tfsafe.safety.membership.audit_membership`).
        pool: ``(x, y)`` the reference models were trained on halves of.
        is_member: bool ``(n,)``: which pool examples the target trained on.
        reference_dir: folder written by :func:`train_reference_models` (all shards).
        modes: any of ``"online"``, ``"offline"``.
        global_variance: see :func:`lira_scores`.
        population: the population the reference models were trained with, if any.
        output: ``"logits"`` / ``"probabilities"`` for callables and files that do not say.
        batch_size: examples per target call.
        augmentations: query augmentations (``("flip",)``: each image also queried flipped);
            the reference models must have been trained with the same ``augmentations``.

    Returns:
        A :class:`~tfsafe.safety.membership.MembershipAudit` with rows ``lira_online``,
        ``lira_offline`` and ``offset`` (``phi - mu_out``, averaged over queries), each with
        ``reference_models`` (IN / OUT counts), ``global_variance`` and ``queries`` (the
        augmentations used, ``"identity"`` first); ``headline`` is their worst case. A mode
        the reference models cannot support (online without IN models) is listed in
        ``skipped``.

    Raises:
        InputError: bad pool, no usable reference models.
    """
    (x, y), is_member, population = check_audit_pool(pool, is_member, population)
    unknown = set(modes) - {"online", "offline"}
    if unknown or not modes:
        raise InputError(f"LiRA modes must be among 'online', 'offline', got {list(modes)}.")
    augmentations = tuple(augmentations)
    queries = augment_queries(x, augmentations)
    refs = load_reference_models(reference_dir, (x, y), population, augmentations)
    target_phi = logit_confidence(np.stack([target_logits(model, q, batch_size, output) for q in queries]), y)
    ref_phi = logit_confidence(np.stack([refs.logits, *(refs.aug_logits[a] for a in augmentations)], axis=1), y)
    if not augmentations:  # one query: the plain (n,) / (models, n) statistics
        target_phi, ref_phi = target_phi[0], ref_phi[:, 0]
    counts = refs.counts()
    names = ["identity", *augmentations]
    rows, skipped = [], []
    for mode in modes:
        try:
            scores, used_global = lira_scores(target_phi, ref_phi, refs.in_mask, mode, global_variance)
        except InputError as err:
            skipped.append({"attack": f"lira_{mode}", "reason": str(err)})
            continue
        rows.append(roc_row(f"lira_{mode}", is_member, scores, reference_models=counts,
                            global_variance=used_global, queries=names))
    if (~refs.in_mask).sum(0).min() >= 1:
        out_mask = ~refs.in_mask if not augmentations else (~refs.in_mask)[:, None, :]
        mu_out, _ = _masked_mean_std(ref_phi, out_mask)
        offset = target_phi - mu_out
        rows.append(roc_row("offset", is_member, offset if not augmentations else offset.mean(0),
                            reference_models=counts, queries=names))
    if not rows:
        raise InputError("LiRA could not run: " + "; ".join(s["reason"] for s in skipped))
    worst = worst_case(rows)
    return MembershipAudit(attacks=rows, worst=worst, n_members=int(is_member.sum()),
                           n_nonmembers=int((~is_member).sum()), skipped=skipped, headline=dict(worst))
