"""``seg-pretrain``: the contrastive loss's values, the exact correspondence of the two views, and the warm start
of a segmentation run from the pretraining run's weights file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fewlabels.config import ConfigError
from fewlabels.data.base import DataError, FewDataset
from fewlabels.engine import train
from fewlabels.methods.pretrain.losses import pixel_infonce, retrieval_accuracy
from fewlabels.methods.pretrain.views import ImageList, TwoViews, smallest_overlap
from fewlabels.registry import config_from_dict, get_method

_SCENES = {"dataset": "scenes", "labeled": 8, "scenes_train": 16, "scenes_val": 4, "scenes_size": 32, "crop_size": 32}


def test_infonce_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    t = 0.3
    an, pn = a / a.norm(dim=1, keepdim=True), p / p.norm(dim=1, keepdim=True)
    sim = an @ pn.t() / t
    forward = -(sim.diag() - sim.logsumexp(dim=1)).mean()
    backward = -(sim.diag() - sim.logsumexp(dim=0)).mean()
    assert pixel_infonce(a, p, t).item() == pytest.approx(0.5 * (forward + backward).item(), rel=1e-6)
    # symmetric in its two arguments, and invariant to the scale of each row
    assert pixel_infonce(p, a, t).item() == pytest.approx(pixel_infonce(a, p, t).item(), rel=1e-6)
    assert pixel_infonce(3 * a, 0.5 * p, t).item() == pytest.approx(pixel_infonce(a, p, t).item(), rel=1e-6)


def test_infonce_bounds_uninformative_and_separated_embeddings() -> None:
    same = torch.ones(8, 4)
    assert pixel_infonce(same, same, 0.2).item() == pytest.approx(math.log(8), rel=1e-6)
    eye = torch.eye(8)
    assert pixel_infonce(eye, eye, 0.01).item() < 1e-12  # exp(-100) per negative
    assert retrieval_accuracy(eye, eye).item() == 1.0
    assert retrieval_accuracy(eye, eye.roll(1, dims=0)).item() == 0.0


def test_infonce_refuses_bad_shapes_and_temperature() -> None:
    with pytest.raises(ValueError, match="both be"):
        pixel_infonce(torch.ones(3, 2), torch.ones(4, 2), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        pixel_infonce(torch.ones(3, 2), torch.ones(3, 2), 0.0)


class _Coordinates(FewDataset):
    """Images whose channels 0 and 1 hold each pixel's row and column / 256 (channel 2: the image index / 256), in
    [0, 1] and exact in float32."""

    def __init__(self, n: int, h: int, w: int) -> None:
        self.n, self.h, self.w = n, h, w

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int, rng: np.random.Generator | None) -> dict:
        rows = torch.arange(self.h, dtype=torch.float32).view(-1, 1).expand(self.h, self.w)
        cols = torch.arange(self.w, dtype=torch.float32).view(1, -1).expand(self.h, self.w)
        image = torch.stack([rows, cols, torch.full_like(rows, float(index))]) / 256
        return {"image": image, "mask": None}


@pytest.mark.parametrize(("h", "w", "crop", "stride"), [(48, 40, 16, 8), (96, 96, 64, 8), (33, 70, 32, 16)])
def test_matched_cells_see_the_same_pixels(h: int, w: int, crop: int, stride: int) -> None:
    grid, n = crop // stride, smallest_overlap(crop, stride, 0.5)
    views = TwoViews(_Coordinates(3, h, w), crop, stride, positions=n, max_shift=0.5, jitter=0.0, grayscale=0.0)
    shifts = set()
    for seed in range(20):
        item = views.sample(seed % 3, np.random.default_rng(seed))
        v1, v2 = item["view1"], item["view2"]
        assert v1.shape == v2.shape == (3, crop, crop)
        pos1, pos2 = item["pos1"], item["pos2"]
        assert pos1.shape == pos2.shape == (n,) and pos1.max() < grid * grid and pos2.min() >= 0
        assert len(set(pos1.tolist())) == n  # distinct cells: no negative equals its anchor's positive
        for a, b in zip(pos1.tolist(), pos2.tolist(), strict=True):
            (i1, j1), (i2, j2) = divmod(a, grid), divmod(b, grid)
            # the whole stride x stride block of each matched cell is the same image region
            block1 = v1[:, i1 * stride : (i1 + 1) * stride, j1 * stride : (j1 + 1) * stride]
            block2 = v2[:, i2 * stride : (i2 + 1) * stride, j2 * stride : (j2 + 1) * stride]
            assert torch.equal(block1, block2)
        # the shift of view 2, in pixels, is a whole number of cells and at most half the crop
        dy, dx = (256 * (v2[0, 0, 0] - v1[0, 0, 0])).item(), abs(256 * (v2[1, 0, 0] - v1[1, 0, 0]).item())
        assert dy % stride == 0 and dx % stride == 0 and abs(dy) <= crop // 2 and dx <= crop // 2
        shifts.add((dy, dx))
    assert len(shifts) >= 2  # the shift is drawn, not fixed


def test_more_positions_than_the_smallest_overlap_are_refused() -> None:
    assert (
        smallest_overlap(64, 8, 0.5) == 16 and smallest_overlap(64, 8, 0.25) == 36 and smallest_overlap(16, 8, 1) == 1
    )
    with pytest.raises(DataError, match="only 16 cells"):
        TwoViews(_Coordinates(1, 96, 96), 64, 8, positions=17)


def test_views_jitter_each_view_and_evaluation_is_fixed() -> None:
    images = ImageList(_Coordinates(2, 32, 32))
    views = TwoViews(images, 16, 8, positions=1, jitter=0.4, grayscale=0.0)
    first = views.sample(1, np.random.default_rng(0))
    again = views.sample(1, np.random.default_rng(0))
    assert all(torch.equal(first[k], again[k]) for k in ("view1", "view2", "pos1", "pos2"))
    assert float(first["view1"].max()) <= 1.0 and float(first["view1"].min()) >= 0.0  # clamped to [0, 1]
    fixed = [views.sample(1, None) for _ in range(2)]
    assert all(torch.equal(fixed[0][k], fixed[1][k]) for k in ("view1", "view2", "pos1", "pos2"))


def test_small_images_are_padded_to_the_crop() -> None:
    views = TwoViews(ImageList(_Coordinates(1, 10, 40)), 16, 8, positions=1, jitter=0.0, grayscale=0.0)
    item = views.sample(0, None)
    assert item["view1"].shape == (3, 16, 16)
    assert torch.equal(item["view1"][:2, 10:, 0], torch.tensor([0.485, 0.456]).view(2, 1).expand(2, 6))


def test_image_list_concatenates_and_drops_masks() -> None:
    images = ImageList(_Coordinates(2, 8, 8), _Coordinates(0, 8, 8), _Coordinates(3, 8, 8))
    assert len(images) == 5
    assert float(images.sample(4, None)["image"][2, 0, 0]) == 2 / 256 and "mask" not in images.sample(4, None)


def _config(tmp_path: Path, **pretrain: object) -> dict:
    return {
        "method": "seg-pretrain",
        "name": "pre",
        "output_dir": str(tmp_path),
        "data": _SCENES,
        "model": {"projection_dim": 8, "hidden": 16},
        "pretrain": {"crop_size": 32, "positions": 4, **pretrain},
        "train": {"steps": 30, "batch_size": 4, "lr": 0.01, "optimizer": "adam", "eval_every": 15, "num_workers": 0},
    }


def test_crop_must_be_a_multiple_of_the_output_stride(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pretrain.crop_size"):
        config_from_dict(_config(tmp_path, crop_size=20))
    with pytest.raises(ConfigError, match="pretrain.positions"):
        config_from_dict(_config(tmp_path, positions=5))


def test_pretraining_learns_and_warm_starts_a_segmentation_run(tmp_path: Path) -> None:
    result = train(config_from_dict(_config(tmp_path)))
    run = result.run_dir
    assert "retrieval_acc" in result.metrics and 0.0 <= result.metrics["retrieval_acc"] <= 1.0
    # the validation loss is below chance (log 16: the 16 positions of the 4 validation images, 4 each)
    assert result.metrics["loss"] < math.log(4 * 4) - 0.1
    weights = load_file(str(run / "model.safetensors"))
    assert any(k.startswith("head.") for k in weights) and not any(k in ("mean", "std") for k in weights)
    seg = config_from_dict(
        {
            "method": "supervised",
            "name": "warm",
            "output_dir": str(tmp_path),
            "data": _SCENES,
            "model": {"pretrained": str(run / "model.safetensors")},
        }
    )
    model = get_method(seg.method)(seg).build_model()
    encoder = model.net.encoder.state_dict() if hasattr(model, "net") else model.encoder.state_dict()
    for name, value in encoder.items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(value, weights[f"encoder.{name}"]), name
    assert seg.model.encoder_lr_scale == 0.1  # a pretrained encoder is fine-tuned gently unless told otherwise
