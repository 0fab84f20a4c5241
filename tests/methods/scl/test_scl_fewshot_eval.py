import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from fewlabels.data.base import DataError, FewDataset
from fewlabels.data.episodes import EpisodeSampler, EpisodicDataset
from fewlabels.methods.scl.fewshot_eval import (
    batched_logistic_regression,
    episode_accuracies,
    extract_features,
    fewshot_evaluate,
    nearest_centroid_proba,
)


def _episodes(seed: int, e: int = 12, w: int = 5, s: int = 5, q: int = 6, f: int = 48):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(e, w, f, generator=gen)
    ys = torch.arange(w).repeat_interleave(s).expand(e, -1)
    yq = torch.arange(w).repeat_interleave(q).expand(e, -1)
    idx = torch.arange(e)[:, None]
    xs = F.normalize(centers[idx, ys] + 1.5 * torch.randn(e, w * s, f, generator=gen), dim=2).double()
    xq = F.normalize(centers[idx, yq] + 1.5 * torch.randn(e, w * q, f, generator=gen), dim=2).double()
    return xs, ys, xq, yq


@pytest.mark.parametrize("shots", [1, 5])
def test_batched_logistic_regression_matches_scikit_learn(shots):
    xs, ys, xq, yq = _episodes(shots, s=shots)
    sol = batched_logistic_regression(xs, ys, 5, C=1.0)
    ours = sol.logits(xq).softmax(dim=2)
    agree, acc_ours, acc_sk = [], [], []
    for i in range(xs.shape[0]):
        clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(xs[i].numpy(), ys[i].numpy())
        np.testing.assert_allclose(sol.weight[i].T.numpy(), clf.coef_, atol=2e-5)
        sk = clf.predict_proba(xq[i].numpy())
        np.testing.assert_allclose(ours[i].numpy(), sk, atol=2e-5)
        agree.append((ours[i].argmax(1).numpy() == sk.argmax(1)).mean())
        acc_ours.append((ours[i].argmax(1) == yq[i]).double().mean().item())
        acc_sk.append((sk.argmax(1) == yq[i].numpy()).mean())
    assert np.mean(agree) == 1.0
    assert abs(np.mean(acc_ours) - np.mean(acc_sk)) <= 0.01


def test_batched_logistic_regression_handles_duplicate_support_vectors():
    # Identical support images (rank-deficient Gram matrix) must not break the solver.
    xs, ys, xq, _ = _episodes(3, e=2, s=2)
    xs = torch.cat([xs, xs], dim=1)
    ys = torch.cat([ys, ys], dim=1)
    sol = batched_logistic_regression(xs, ys, 5)
    clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(xs[0].numpy(), ys[0].numpy())
    np.testing.assert_allclose(sol.weight[0].T.numpy(), clf.coef_, atol=2e-5)
    assert torch.isfinite(sol.logits(xq)).all()


def test_nearest_centroid_assigns_points_to_the_closest_class_mean():
    xs = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]]])
    ys = torch.tensor([[0, 0, 1, 1]])
    xq = torch.tensor([[[1.0, 1.0], [9.0, 1.0]]])
    proba = nearest_centroid_proba(xs, ys, xq, 2)
    assert proba.argmax(dim=2).tolist() == [[0, 1]]
    expected = torch.softmax(torch.tensor([-1.0, -81.0]), 0)
    torch.testing.assert_close(proba[0, 0], expected)


def test_seeded_episodes_are_reproducible_and_seed_dependent():
    labels = np.repeat(np.arange(10), 20)
    a = EpisodeSampler(labels, 5, 1, 15, 7, seed=3).as_arrays()
    b = EpisodeSampler(labels, 5, 1, 15, 7, seed=3).as_arrays()
    c = EpisodeSampler(labels, 5, 1, 15, 7, seed=4).as_arrays()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    classes, support, query = a
    for e in range(7):
        assert len(set(classes[e])) == 5
        for k in range(5):
            chosen = np.concatenate([support[e, k], query[e, k]])
            assert len(set(chosen)) == 16 and set(labels[chosen]) == {classes[e, k]}


def test_sampler_refuses_classes_smaller_than_shot_plus_query():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 7 + [3] * 20 + [4] * 20)
    with pytest.raises(DataError, match=r"5 \+ 15 = 20 .*class 2 has 7 image"):
        EpisodeSampler(labels, 5, 5, 15, 10)
    with pytest.raises(DataError, match="at least 6 classes, but the split has only 5"):
        EpisodeSampler(np.repeat(np.arange(5), 30), 6, 1, 1, 10)


class _Blobs(FewDataset):
    """Images whose dominant channel encodes the class: (nearly) orthogonal, separable features."""

    def __init__(self, classes: int = 8, per_class: int = 20) -> None:
        gen = torch.Generator().manual_seed(0)
        self.labels = np.repeat(np.arange(classes), per_class)
        colours = torch.eye(classes)
        noise = 0.05 * torch.rand(len(self.labels), classes, 8, 8, generator=gen)
        self.images = colours[self.labels][:, :, None, None] + noise

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, index, rng):
        return {"image": self.images[index], "label": torch.tensor(int(self.labels[index])), "index": index}


class _Identity(nn.Module):
    def forward(self, images, mode="features"):
        spatial = images
        return spatial, spatial.mean(dim=(2, 3))


def test_fewshot_evaluate_reports_accuracy_and_confidence_for_each_shot():
    res = fewshot_evaluate(_Identity(), _Blobs(), shots=(1, 5), ways=5, queries=5, episodes=20, seed=0, device="cpu")
    assert res["acc_1shot"] == pytest.approx(100.0) and res["acc_5shot"] == pytest.approx(100.0)
    assert res["ci95_5shot"] == pytest.approx(0.0)
    nc = fewshot_evaluate(_Identity(), _Blobs(), shots=(5,), queries=5, episodes=20, classifier="nc", device="cpu")
    assert nc["acc_5shot"] == pytest.approx(100.0)


def test_fast_and_exact_paths_agree_on_the_same_episodes():
    gen = torch.Generator().manual_seed(1)
    ds = _Blobs(classes=6, per_class=12)
    ds.images = ds.images + 1.5 * torch.rand(len(ds), 6, 1, 1, generator=gen)  # overlap so accuracy < 100
    feats = extract_features(_Identity(), ds)
    _, support, query = EpisodeSampler(ds.labels, 5, 1, 5, 15, seed=0).as_arrays()
    fast = episode_accuracies(feats, support, query, exact=False)
    exact = episode_accuracies(feats, support, query, exact=True)
    assert abs(fast.mean() - exact.mean()) <= 0.01
    assert fast.mean() < 1.0


def test_episodic_dataset_returns_a_whole_episode_from_the_rng():
    ds = _Blobs()
    episodes = EpisodicDataset(ds, ds.labels, n_way=3, n_shot=2, n_query=4, episodes_per_epoch=5)
    a = episodes.sample(0, np.random.default_rng(1))
    b = episodes.sample(0, np.random.default_rng(1))
    assert a["support"].shape == (6, 8, 8, 8) and a["query"].shape == (12, 8, 8, 8)
    assert torch.equal(a["support"], b["support"])
    assert a["support_labels"].tolist() == [0, 0, 1, 1, 2, 2]
