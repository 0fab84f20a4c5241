"""Few-shot episodes: seeded sampling of N-way K-shot tasks from a labelled set.

An episode is ``n_way`` classes drawn without replacement, and for each class ``n_shot + n_query`` distinct
images: the first ``n_shot`` form the support set, the rest the query set. Episode labels are the positions
``0..n_way-1`` of the drawn classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fewlabels.data.base import DataError, FewDataset


@dataclass(frozen=True)
class Episode:
    """``classes [n_way]`` dataset labels; ``support [n_way, n_shot]`` and ``query [n_way, n_query]``
    indices."""

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray


def _class_members(labels: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return {int(v): order[s:e] for v, s, e in zip(values, starts, [*starts[1:], len(order)])}


def check_episode_request(labels: np.ndarray, n_way: int, n_shot: int, n_query: int) -> dict[int, np.ndarray]:
    """Indices of each class, or a :class:`DataError` saying why ``n_way``-way ``n_shot``-shot is impossible."""
    if n_way < 1 or n_shot < 1 or n_query < 0:
        raise DataError(f"an episode needs n_way >= 1, n_shot >= 1, n_query >= 0; got {n_way}, {n_shot}, {n_query}")
    members = _class_members(np.asarray(labels).reshape(-1))
    if len(members) < n_way:
        raise DataError(f"{n_way}-way episodes need at least {n_way} classes, but the split has only {len(members)}")
    need = n_shot + n_query
    small = [(c, len(idx)) for c, idx in members.items() if len(idx) < need]
    if small:
        # easyfsl's most reported issue: an opaque numpy error when a class is too small. Name the classes.
        shown = ", ".join(f"class {c} has {n}" for c, n in small[:5])
        more = f" (and {len(small) - 5} more)" if len(small) > 5 else ""
        raise DataError(
            f"n_shot + n_query = {n_shot} + {n_query} = {need} images per class are needed, but {shown} "
            f"image(s){more}. Lower n_shot/n_query or remove the small classes."
        )
    return members


class EpisodeSampler:
    """Seeded, reproducible sequence of ``n_episodes`` episodes over ``labels``.

    The same ``(labels, n_way, n_shot, n_query, n_episodes, seed)`` always gives the same episodes (the
    reference drew them from an unseeded global RNG). Impossible requests raise :class:`DataError` at
    construction.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        n_way: int,
        n_shot: int,
        n_query: int,
        n_episodes: int,
        seed: int = 0,
    ) -> None:
        self.labels = np.asarray(labels).reshape(-1)
        self.members = check_episode_request(self.labels, n_way, n_shot, n_query)
        self.class_ids = np.array(sorted(self.members))
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self.n_episodes = n_episodes
        self.seed = seed

    def __len__(self) -> int:
        return self.n_episodes

    def draw(self, rng: np.random.Generator) -> Episode:
        """One episode drawn with ``rng``."""
        classes = rng.choice(self.class_ids, size=self.n_way, replace=False)
        picks = np.stack(
            [rng.choice(self.members[int(c)], size=self.n_shot + self.n_query, replace=False) for c in classes]
        )
        return Episode(classes=classes, support=picks[:, : self.n_shot], query=picks[:, self.n_shot :])

    def __iter__(self) -> Iterator[Episode]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n_episodes):
            yield self.draw(rng)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(classes [E, n_way], support [E, n_way, n_shot], query [E, n_way, n_query])`` of every episode."""
        episodes = list(self)
        return (
            np.stack([e.classes for e in episodes]),
            np.stack([e.support for e in episodes]),
            np.stack([e.query for e in episodes]),
        )


class EpisodicDataset(FewDataset):
    """Episodes as dataset items, for episodic training through the engine (one item = one whole episode).

    ``sample(index, rng)`` draws the episode from ``rng`` (the engine's per-(seed, epoch, index) generator, so
    a resumed run sees the same episodes); without a generator (evaluation) episode ``index`` of a fixed seed
    is used. Returns ``support [n_way * n_shot, C, H, W]``, ``query [n_way * n_query, C, H, W]`` (class-major) and their
    episode labels ``support_labels``, ``query_labels``.
    """

    def __init__(
        self,
        dataset: FewDataset,
        labels: np.ndarray,
        n_way: int,
        n_shot: int,
        n_query: int,
        episodes_per_epoch: int = 1000,
    ) -> None:
        self.dataset = dataset
        self.sampler = EpisodeSampler(labels, n_way, n_shot, n_query, episodes_per_epoch, seed=0)
        self.episodes_per_epoch = episodes_per_epoch

    def __len__(self) -> int:
        return self.episodes_per_epoch

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        episode = self.sampler.draw(rng if rng is not None else np.random.default_rng([self.sampler.seed, index]))
        s = self.sampler

        def images(idx: np.ndarray) -> torch.Tensor:
            return torch.stack([self.dataset.sample(int(i), rng)["image"] for i in idx.reshape(-1)])

        return {
            "support": images(episode.support),
            "query": images(episode.query),
            "support_labels": torch.arange(s.n_way).repeat_interleave(s.n_shot),
            "query_labels": torch.arange(s.n_way).repeat_interleave(s.n_query),
        }
