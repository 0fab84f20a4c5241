"""Episodic few-shot evaluation: a linear probe per episode on frozen, L2-normalised features.

Protocol (RFS / SCL): for each N-way K-shot episode, fit a multinomial logistic regression (L2, ``C = 1``) on
the support features of each feature type -- the globally pooled vector ``[D]`` and the 2x2 max-pooled spatial
map ``[4D]`` -- and sum the predicted query probabilities. Report the mean accuracy over episodes with its 95%
Student-t confidence half-width, in percent.

Fast path (default): every test image's features (and a fixed number of augmented copies for support augmentation) are
extracted once, then the classifiers of all episodes are solved together by :func:`batched_logistic_regression` (batched
Newton-CG in the span of the support features, float64). Exact path (``exact=True``): scikit-learn's
``LogisticRegression(C=1)`` per episode on the same features. :func:`reference_protocol_evaluate` additionally re-runs
the backbone on every episode, as the reference did (used by ``benchmarks/fewshot_eval.py`` for comparison).

The protocol (ways, shots, queries, episodes, seed, classifier, support augmentation) is one
:class:`~fewlabels.methods.scl.config.FewShotEvalConfig`; a few-shot run's ``eval`` section is one.
:func:`evaluate_split` scores a loaded run with the protocol of its own config::

    run = fewlabels.load("runs/scl-mini")
    result = evaluate_split(run.method, run.model, "test")
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.data.base import FewDataset
from fewlabels.data.episodes import EpisodeSampler
from fewlabels.methods.scl.augment import build_view
from fewlabels.methods.scl.config import FewShotConfig, FewShotEvalConfig
from fewlabels.progress import Progress

FEATURE_TYPES: tuple[str, ...] = ("pooled", "spatial")
#: ``eval.features`` -> the feature types whose classifiers' probabilities are summed
FEATURE_CHOICES: dict[str, tuple[str, ...]] = {"both": FEATURE_TYPES, "pooled": ("pooled",), "spatial": ("spatial",)}


def feature_types(choice: str) -> tuple[str, ...]:
    """The feature types of an ``eval.features`` value (``both``, ``pooled`` or ``spatial``)."""
    if choice not in FEATURE_CHOICES:
        raise ValueError(f"unknown feature choice {choice!r}; choose one of: {', '.join(FEATURE_CHOICES)}")
    return FEATURE_CHOICES[choice]


@dataclass
class EvalFeatures:
    """Per-type features ``{type: [1 + copies, N, F]}`` (copy 0 unaugmented) and the labels ``[N]``."""

    features: dict[str, Tensor]
    labels: np.ndarray


@dataclass
class LinearSolution:
    """Per-episode multinomial classifier ``logits = x @ weight + bias``: ``weight [E, F, W]``, ``bias [E, W]``."""

    weight: Tensor
    bias: Tensor
    iterations: int

    def logits(self, x: Tensor) -> Tensor:
        """``x [E, q, F] -> [E, q, W]``."""
        return torch.baddbmm(self.bias[:, None, :], x.to(self.weight.dtype), self.weight)


def embed(spatial: Tensor, pooled: Tensor) -> dict[str, Tensor]:
    """Evaluation features: L2-normalised ``pooled [B, D]`` and 2x2 max-pooled ``spatial`` ``[B, 4D]``."""
    return {
        "pooled": F.normalize(pooled.float(), dim=1),
        "spatial": F.normalize(F.adaptive_max_pool2d(spatial.float(), 2).flatten(1), dim=1),
    }


def _labels_of(dataset: FewDataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    return np.asarray(labels, dtype=np.int64).reshape(-1)


@torch.no_grad()
def _embed_images(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    spatial, pooled = model(images, mode="features")
    return embed(spatial, pooled)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: FewDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    augment_copies: int = 0,
    augment_view: str = "standard",
    seed: int = 0,
    label: str = "features",
) -> EvalFeatures:
    """Run the backbone once over ``dataset`` (plus ``augment_copies`` augmented passes, seeded by ``seed``); the
    images done are shown on stderr as ``label`` (:mod:`fewlabels.progress`)."""
    device = torch.device(device)
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks: dict[str, list[list[Tensor]]] = {t: [[] for _ in range(1 + augment_copies)] for t in FEATURE_TYPES}
    view: nn.Module | None = None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), Progress(len(dataset), label, "images") as progress:
        torch.manual_seed(seed)
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            if view is None and augment_copies:
                view = build_view(augment_view, images.shape[-1]).to(device)
            for copy in range(1 + augment_copies):
                x = images if copy == 0 else view(images).clamp(0.0, 1.0)  # type: ignore[misc]
                for t, f in _embed_images(model, x).items():
                    chunks[t][copy].append(f.cpu())
            progress.update(images.shape[0])
    features = {t: torch.stack([torch.cat(c) for c in copies]) for t, copies in chunks.items()}
    return EvalFeatures(features, _labels_of(dataset))


def _logsumexp(logits: Tensor) -> Tensor:
    # torch.logsumexp over a short last dimension is several times slower on CPU than this direct form.
    top = logits.amax(dim=-1, keepdim=True)
    return (logits - top).exp().sum(dim=-1).log() + top.squeeze(-1)


def _objective(design: Tensor, theta: Tensor, onehot: Tensor, penalty: Tensor) -> Tensor:
    """``sum_i CE(design_i @ theta, y_i) + 1/2 sum penalty * theta^2`` per episode: ``[E]``."""
    logits = design @ theta
    ce = _logsumexp(logits) - (logits * onehot).sum(dim=2)
    return ce.sum(dim=1) + 0.5 * (penalty[:, :, None] * theta.square()).sum(dim=(1, 2))


def _hessian_product(design: Tensor, p: Tensor, penalty: Tensor, v: Tensor) -> Tensor:
    """``H v`` for the Hessian of :func:`_objective` at probabilities ``p [E, n, W]``; ``v [E, d, W]``.

    ``H v = X^T (p * u - p * <p, u>) + penalty * v`` with ``u = X v``: two batched products, no ``(dW)^2``
    matrix.
    """
    u = design @ v
    pu = p * u
    return design.transpose(1, 2) @ (pu - p * pu.sum(dim=2, keepdim=True)) + penalty[:, :, None] * v


def _conjugate_gradient(
    design: Tensor, p: Tensor, penalty: Tensor, rhs: Tensor, max_iter: int, rel_tol: float = 1e-16
) -> Tensor:
    """Solve ``H x = rhs`` for every episode by conjugate gradients (H symmetric positive semi-definite).

    With L2-normalised features the Hessian is well conditioned (eigenvalues between the penalty ``1/C`` and
    about ``1/C + n/4``); its only null direction, a constant shift of the biases, is orthogonal to the
    gradient, so CG stays in the range and converges in a few tens of iterations without forming or factorising ``H``.
    ``rel_tol`` bounds the squared residual relative to the squared right-hand side (1e-8 relative residual: an inexact
    Newton step that still converges quadratically to the float64 limit).
    """

    def project(v: Tensor) -> Tensor:
        # Remove the bias-shift component (last row, mean over classes): zero curvature, and round-off there
        # would otherwise be amplified by CG into a useless huge step.
        return torch.cat([v[:, :-1], v[:, -1:] - v[:, -1:].mean(dim=2, keepdim=True)], dim=1)

    x = torch.zeros_like(rhs)
    r = project(rhs)
    d = r.clone()
    rr = r.square().sum(dim=(1, 2))
    stop = rel_tol * rr
    for _ in range(max_iter):
        active = rr > stop
        if not bool(active.any()):
            break
        hd = project(_hessian_product(design, p, penalty, d))
        dhd = (d * hd).sum(dim=(1, 2))
        alpha = torch.where(active & (dhd > 0), rr / dhd.clamp(min=1e-300), torch.zeros_like(rr))
        x = x + alpha[:, None, None] * d
        r = r - alpha[:, None, None] * hd
        rr_new = r.square().sum(dim=(1, 2))
        beta = torch.where(active, rr_new / rr.clamp(min=1e-300), torch.zeros_like(rr))
        d = r + beta[:, None, None] * d
        rr = torch.where(active, rr_new, rr)
    return x


def _newton(design: Tensor, onehot: Tensor, penalty: Tensor, max_iter: int, tol: float) -> tuple[Tensor, int]:
    """Minimise :func:`_objective` over ``theta [E, d, W]`` by Newton-CG with backtracking (Armijo)."""
    e, n, d = design.shape
    w = onehot.shape[2]
    theta = design.new_zeros(e, d, w)
    f0 = _objective(design, theta, onehot, penalty)
    it = 0
    for it in range(1, max_iter + 1):
        p = (design @ theta).softmax(dim=2)
        grad = design.transpose(1, 2) @ (p - onehot) + penalty[:, :, None] * theta
        if float(grad.abs().amax()) < tol:
            it -= 1
            break
        direction = _conjugate_gradient(design, p, penalty, grad, max_iter=2 * d * w)
        slope = (grad * direction).sum(dim=(1, 2))
        # Full Newton steps almost always pass; halve only the episodes that fail the Armijo condition.
        step = torch.ones(e, dtype=design.dtype, device=design.device)
        for _ in range(30):
            trial = theta - step[:, None, None] * direction
            value = _objective(design, trial, onehot, penalty)
            failed = value > f0 - 1e-4 * step * slope
            if not bool(failed.any()):
                break
            step = torch.where(failed, step * 0.5, step)
        theta, f0 = trial, value
    return theta, it


def batched_logistic_regression(
    x: Tensor,
    y: Tensor,
    n_classes: int,
    C: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-8,
    max_hessian_bytes: int = 256 * 2**20,
    progress: Callable[[int], None] | None = None,
) -> LinearSolution:
    """Multinomial L2 logistic regression for ``E`` episodes at once, with scikit-learn's semantics.

    Minimises ``sum_i CE(W^T x_i + b, y_i) + ||W||^2 / (2C)`` (bias unpenalised) for each episode, with
    ``x [E, n, F]``, ``y [E, n]`` in ``0..n_classes-1``. By the representer theorem ``W`` lies in the span of
    the episode's ``n`` support vectors, so the problem is solved exactly in an orthonormal basis of that span
    (eigenvectors of the Gram matrix ``x x^T``, dimension ``n`` instead of ``F``) by Newton's method in
    float64, converging to ``max |gradient| < tol``. Returns ``weight [E, F, W]``, ``bias [E, W]``. ``progress``
    is called with the number of episodes solved after each chunk of them.
    """
    e, n, f = x.shape
    xd = x.to(torch.float64)
    onehot = F.one_hot(y.long(), n_classes).to(xd)
    d = n + 1
    per_episode = 8 * (d * n_classes) ** 2 * 3
    chunk = max(1, int(max_hessian_bytes // per_episode))
    weights, biases, iters = [], [], 0
    for start in range(0, e, chunk):
        xc, yc = xd[start : start + chunk], onehot[start : start + chunk]
        evals, evecs = torch.linalg.eigh(xc @ xc.transpose(1, 2))  # [E, n], [E, n, n]
        # Directions with (numerically) zero variance carry no information: dropping them is exact.
        keep = evals > 1e-10 * evals.amax(dim=1, keepdim=True).clamp(min=1e-30)
        sqrt = evals.clamp(min=0).sqrt() * keep
        basis = evecs * sqrt[:, None, :]  # coordinates of the support vectors in the span: U S, [E, n, n]
        design = torch.cat([basis, torch.ones_like(basis[:, :, :1])], dim=2)
        penalty = torch.cat([torch.full_like(sqrt, 1.0 / C), torch.zeros_like(sqrt[:, :1])], dim=1)
        theta, it = _newton(design, yc, penalty, max_iter, tol)
        iters = max(iters, it)
        # back to feature space: W = x^T U S^-1 Z (zero where a direction was dropped)
        inv = torch.where(keep, 1.0 / sqrt.clamp(min=1e-300), torch.zeros_like(sqrt))
        weights.append(xc.transpose(1, 2) @ (evecs * inv[:, None, :]) @ theta[:, :n])
        biases.append(theta[:, n])
        if progress is not None:
            progress(xc.shape[0])
    return LinearSolution(torch.cat(weights), torch.cat(biases), iters)


#: Floating-point work of one batched solver product below which one more CPU thread does not pay: the
#: products are ``[E, n, n+1] @ [E, n+1, W]``, and a thread team synchronises (and, when another process holds
#: the cores, waits for a descheduled member) at every one of the solver's thousands of small ops. Measured on a
#: shared 2-core machine (load ~16): 2 threads were 8-13x slower than 1 for 100-600 episodes of 5-way 1- and
#: 5-shot (benchmarks/fewshot_eval.py --load), so even a 600-episode 5-shot evaluation with 5 augmented support
#: copies (~1e8 flops per product) stays on one thread.
WORK_PER_THREAD = 2**28


def solver_thread_count(x: Tensor, n_classes: int, available: int | None = None) -> int:
    """CPU threads for the batched solver on support features ``x [E, n, F]``: one per ``WORK_PER_THREAD``
    flops of its typical product, at most ``available`` (default ``torch.get_num_threads()``)."""
    e, n = x.shape[:2]
    work = 2 * e * n * (n + 1) * n_classes
    limit = torch.get_num_threads() if available is None else available
    return int(max(1, min(limit, work // WORK_PER_THREAD)))


@contextlib.contextmanager
def solver_threads(x: Tensor, n_classes: int) -> Iterator[int]:
    """Run the block with :func:`solver_thread_count` CPU threads (restored afterwards); no-op on an accelerator."""
    before = torch.get_num_threads()
    threads = before if x.device.type != "cpu" else solver_thread_count(x, n_classes, before)
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before:
            torch.set_num_threads(before)


def nearest_centroid_proba(xs: Tensor, ys: Tensor, xq: Tensor, n_classes: int) -> Tensor:
    """ProtoNet classifier: ``softmax(-||x_q - c_k||^2)`` with class means ``c_k``; ``[E, q, W]``."""
    onehot = F.one_hot(ys.long(), n_classes).to(xs.dtype)
    centroids = onehot.transpose(1, 2) @ xs / onehot.sum(dim=1)[:, :, None]
    return (-torch.cdist(xq, centroids).square()).softmax(dim=2)


def _sklearn_proba(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray, C: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    # No `multi_class=` argument: scikit-learn >= 1.8 rejects it (a defect of the reference); the lbfgs solver
    # is multinomial for more than two classes.
    clf = LogisticRegression(C=C, max_iter=1000)
    clf.fit(xs, ys)
    return clf.predict_proba(xq)


def support_copies(copies: int) -> list[int]:
    """Feature copies that make up the support: the raw image (copy 0) without augmentation, else the
    ``copies`` augmented copies 1..copies only -- the reference augments every copy of a support image."""
    return list(range(1, copies + 1)) if copies > 0 else [0]


def _episode_sets(
    feats: Tensor, support: np.ndarray, query: np.ndarray, copies: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Support ``[E, max(1, copies) W S, F]`` with labels, query ``[E, W Q, F]`` (raw copy) with labels."""
    e, w, s = support.shape
    q = query.shape[2]
    sup = torch.as_tensor(support.reshape(e, -1))
    used = support_copies(copies)
    xs = torch.cat([feats[c][sup] for c in used], dim=1)
    ys = torch.arange(w).repeat_interleave(s).repeat(len(used)).expand(e, -1)
    xq = feats[0][torch.as_tensor(query.reshape(e, -1))]
    yq = torch.arange(w).repeat_interleave(q).expand(e, -1)
    return xs, ys, xq, yq


def classifier_proba(
    xs: Tensor,
    ys: Tensor,
    xq: Tensor,
    n_classes: int,
    classifier: Literal["lr", "nc"] = "lr",
    exact: bool = False,
    C: float = 1.0,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Query probabilities ``[E, q, W]`` (float64, CPU) of the episode classifier fitted on one feature type.

    ``xs [E, n, F]`` support features with labels ``ys [E, n]`` in ``0..n_classes-1``, ``xq [E, q, F]``. The
    one classifier of both evaluation and few-shot prediction: the batched solver, scikit-learn per episode
    (``exact``) or the nearest centroid (``classifier="nc"``). ``progress`` is called with the number of episodes
    done, as they are done.
    """
    done = progress if progress is not None else (lambda n: None)
    if classifier == "nc":
        proba = nearest_centroid_proba(xs.to(device), ys.to(device), xq.to(device), n_classes).cpu().double()
        done(xs.shape[0])
        return proba
    if exact:
        rows = []
        for i in range(xs.shape[0]):
            rows.append(_sklearn_proba(xs[i].numpy(), ys[i].numpy(), xq[i].numpy(), C))
            done(1)
        return torch.from_numpy(np.stack(rows))
    xs = xs.to(device)
    with solver_threads(xs, n_classes):
        sol = batched_logistic_regression(xs, ys.to(device), n_classes, C=C, progress=done)
        return sol.logits(xq.to(device)).softmax(dim=2).cpu()


def episode_accuracies(
    features: EvalFeatures,
    support: np.ndarray,
    query: np.ndarray,
    classifier: Literal["lr", "nc"] = "lr",
    exact: bool = False,
    support_augment: int = 0,
    feature_types: Sequence[str] = FEATURE_TYPES,
    C: float = 1.0,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Accuracy ``[E]`` of each episode (``support [E, W, S]``, ``query [E, W, Q]`` dataset indices);
    ``progress`` is called with the number of classifiers fitted (one per episode and feature type)."""
    w = support.shape[1]
    proba: Tensor | None = None
    yq: Tensor | None = None
    for t in feature_types:
        xs, ys, xq, yq = _episode_sets(features.features[t], support, query, support_augment)
        p = classifier_proba(xs, ys, xq, w, classifier, exact, C, device, progress)
        proba = p if proba is None else proba + p
    assert proba is not None and yq is not None
    return (proba.argmax(dim=2) == yq).double().mean(dim=1).numpy()


def _summary(accs: np.ndarray) -> tuple[float, float]:
    from fewlabels.metrics import mean_confidence_interval

    mean, half = mean_confidence_interval(torch.from_numpy(accs * 100.0))
    return float(mean), float(half)


def fewshot_evaluate(
    model: nn.Module,
    dataset: FewDataset,
    config: FewShotEvalConfig | None = None,
    *,
    shots: Sequence[int] | None = None,
    ways: int | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    classifier: Literal["lr", "nc"] | None = None,
    exact: bool | None = None,
    support_augment: int | None = None,
    batch_size: int | None = None,
    features: Literal["both", "pooled", "spatial"] | None = None,
    device: torch.device | str | None = None,
    C: float = 1.0,
    return_episodes: bool = False,
    label: str = "eval",
) -> dict[str, Any]:
    """Mean accuracy (percent) and 95% CI half-width of the episodes of ``config`` for each number of shots.

    ``model(images, mode="features")`` must return ``(spatial [B, D, h, w], pooled [B, D])``. The protocol is
    ``config`` (default :class:`FewShotEvalConfig`); each keyword from ``shots`` to ``features`` that is not
    ``None`` replaces that field of it. Episodes are seeded by ``seed`` (the same episodes for every model).
    Returns ``{"acc_{K}shot", "ci95_{K}shot"}`` per shot, plus the protocol (``episodes``, ``ways``, ``queries``,
    ``classifier``, ``exact``, ``support_augment``, ``features``, ``seed``) and ``seconds``. The progress is shown
    on stderr (:mod:`fewlabels.progress`): ``<label> features`` (images), then ``<label> episodes`` (classifiers,
    one per episode, number of shots and feature type).
    """
    start = time.perf_counter()
    cfg = _with_fields(
        config if config is not None else FewShotEvalConfig(),
        shots=None if shots is None else list(shots),
        ways=ways,
        queries=queries,
        episodes=episodes,
        seed=seed,
        classifier=classifier,
        exact=exact,
        support_augment=support_augment,
        batch_size=batch_size,
        features=features,
    )
    if device is None:
        device = next(model.parameters()).device
    labels = _labels_of(dataset)
    samplers = {k: EpisodeSampler(labels, cfg.ways, k, cfg.queries, cfg.episodes, cfg.seed) for k in cfg.shots}
    feats = extract_features(
        model, dataset, device, cfg.batch_size, cfg.support_augment, seed=cfg.seed, label=f"{label} features"
    )
    out: dict[str, Any] = {}
    types = feature_types(cfg.features)
    with Progress(len(samplers) * len(types) * cfg.episodes, f"{label} episodes", "classifiers") as fits:
        for k, sampler in samplers.items():
            _, support, query = sampler.as_arrays()
            accs = episode_accuracies(
                feats,
                support,
                query,
                cfg.classifier,
                cfg.exact,
                cfg.support_augment,
                types,
                C=C,
                device=device,
                progress=fits.update,
            )
            out[f"acc_{k}shot"], out[f"ci95_{k}shot"] = _summary(accs)
            if return_episodes:  # per-episode accuracies, e.g. for a histogram
                out[f"episodes_{k}shot"] = [float(a) for a in np.asarray(accs).ravel()]
    out.update(
        episodes=cfg.episodes,
        ways=cfg.ways,
        queries=cfg.queries,
        classifier=cfg.classifier,
        exact=cfg.exact,
        support_augment=cfg.support_augment,
        features=cfg.features,
        seed=cfg.seed,
        seconds=time.perf_counter() - start,
    )
    return out


def _with_fields(config: FewShotEvalConfig, **values: Any) -> FewShotEvalConfig:
    """A copy of ``config`` with the fields of ``values`` that are not ``None`` replaced, then validated."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return config
    out = dataclasses.replace(config, **given)
    out.validate()
    return out


class FewShotSplits(Protocol):
    """What :func:`evaluate_split` needs of a few-shot method: its config (``eval`` section) and its splits."""

    @property
    def config(self) -> FewShotConfig: ...

    def split(self, name: str) -> FewDataset: ...


def evaluate_split(
    method: FewShotSplits,
    model: nn.Module,
    split: str = "test",
    config: FewShotEvalConfig | None = None,
    device: torch.device | str | None = None,
    return_episodes: bool = False,
) -> dict[str, Any]:
    """:func:`fewshot_evaluate` on a split of a few-shot method, by default with the protocol of its config.

    Args:
        method: a few-shot method, e.g. ``run.method`` of ``run = fewlabels.load(RUN_DIR)``.
        model: its trained network, e.g. ``run.model``.
        split: ``test`` (novel classes), ``val`` or ``train`` (base classes).
        config: the protocol; default the ``eval`` section of ``method.config`` (the run's config.yaml).
        device: where the backbone runs (default: where ``model`` is).
        return_episodes: add the per-episode accuracies ``episodes_{K}shot``.

    Returns:
        The result of :func:`fewshot_evaluate` with ``split`` added.
    """
    result = fewshot_evaluate(
        model,
        method.split(split),
        config if config is not None else method.config.eval,
        device=device,
        return_episodes=return_episodes,
        label=f"eval {split}",
    )
    result["split"] = split
    return result


@torch.no_grad()
def reference_protocol_evaluate(
    model: nn.Module,
    dataset: FewDataset,
    shot: int = 1,
    ways: int = 5,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    device: torch.device | str = "cpu",
    C: float = 1.0,
) -> np.ndarray:
    """The reference loop: for every episode, run the backbone on its images and fit scikit-learn per feature type.

    Same episodes as :func:`fewshot_evaluate` with the same seed; returns the per-episode accuracies ``[E]``.
    Kept for comparison and timing (it is what the fast path replaces).
    """
    model.eval()
    labels = _labels_of(dataset)
    sampler = EpisodeSampler(labels, ways, shot, queries, episodes, seed)
    accs = []
    ys = np.repeat(np.arange(ways), shot)
    yq = np.repeat(np.arange(ways), queries)
    for ep in sampler:

        def load(idx: np.ndarray) -> Tensor:
            return torch.stack([dataset[int(i)]["image"] for i in idx.reshape(-1)]).to(device)

        fs, fq = _embed_images(model, load(ep.support)), _embed_images(model, load(ep.query))
        proba = sum(_sklearn_proba(fs[t].cpu().numpy(), ys, fq[t].cpu().numpy(), C) for t in FEATURE_TYPES)
        accs.append(float((np.asarray(proba).argmax(axis=1) == yq).mean()))
    return np.asarray(accs)
