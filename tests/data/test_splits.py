"""Labeled/unlabeled partitions and id-list files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewlabels.data.base import DataError
from fewlabels.data.splits import labeled_unlabeled_split, read_id_list


def test_count_split_is_a_deterministic_partition() -> None:
    labeled, unlabeled = labeled_unlabeled_split(50, 12, seed=3)
    assert len(labeled) == 12 and len(unlabeled) == 38
    assert sorted(labeled + unlabeled) == list(range(50))
    assert labeled == sorted(labeled) and unlabeled == sorted(unlabeled)
    assert labeled_unlabeled_split(50, 12, seed=3) == (labeled, unlabeled)
    assert labeled_unlabeled_split(50, 12, seed=4)[0] != labeled
    assert labeled != list(range(12))  # shuffled, not the first indices


def test_smaller_labeled_sets_are_nested_in_larger_ones() -> None:
    small = set(labeled_unlabeled_split(100, 5, seed=1)[0])
    large = set(labeled_unlabeled_split(100, 30, seed=1)[0])
    assert small < large


def test_fraction_split_rounds_and_keeps_at_least_one() -> None:
    assert len(labeled_unlabeled_split(100, 0.25, seed=0)[0]) == 25
    assert len(labeled_unlabeled_split(10, 0.01, seed=0)[0]) == 1
    labeled, unlabeled = labeled_unlabeled_split(7, 1.0, seed=0)
    assert labeled == list(range(7)) and unlabeled == []
    assert len(labeled_unlabeled_split(7, 7, seed=0)[0]) == 7


@pytest.mark.parametrize(
    ("n", "labeled", "reason"),
    [
        (10, 0, "at least 1"),
        (10, -3, "at least 1"),
        (10, 11, "larger than the dataset"),
        (10, 0.0, r"\(0, 1\]"),
        (10, -0.5, r"\(0, 1\]"),
        (10, 1.5, "pass an int"),
        (10, True, "bool"),
        (0, 1, "empty dataset"),
        (10, "5", "int count or a float fraction"),
    ],
)
def test_impossible_requests_raise_a_data_error_saying_why(n: int, labeled: object, reason: str) -> None:
    with pytest.raises(DataError, match=reason):
        labeled_unlabeled_split(n, labeled, seed=0)  # type: ignore[arg-type]


def test_read_id_list_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("# VOC train ids\n2007_000032\n\n  2007_000039  \n2007_000063 # trailing note\n   \n")
    assert read_id_list(path) == ["2007_000032", "2007_000039", "2007_000063"]
    assert read_id_list(str(path)) == read_id_list(path)


def test_read_id_list_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="id list not found: .*missing.txt"):
        read_id_list(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(DataError, match="contains no ids"):
        read_id_list(empty)
