"""Dense CRF in torch: the exact computation equals a loop over every pixel pair, the large-image approximation
agrees with it, and refinement moves a blurred label boundary onto a colour edge."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark_scripts import load_benchmark
from fewlabels.methods.cct.crf import CRFSettings, crf_refine_labels, dense_crf, unary_from_labels


def naive_dense_crf(unary: torch.Tensor, image: torch.Tensor, cfg: CRFSettings) -> torch.Tensor:
    """The model of the module doc written pair by pair (float64, no vectorisation)."""
    n_labels, h, w = unary.shape
    pix = [(y, x) for y in range(h) for x in range(w)]
    n = len(pix)

    def k_g(i: int, j: int) -> float:
        (yi, xi), (yj, xj) = pix[i], pix[j]
        return math.exp(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * cfg.gaussian_sxy**2))

    def k_b(i: int, j: int) -> float:
        (yi, xi), (yj, xj) = pix[i], pix[j]
        colour = sum((float(image[c, yi, xi]) - float(image[c, yj, xj])) ** 2 for c in range(3))
        spatial = (yi - yj) ** 2 + (xi - xj) ** 2
        return math.exp(-spatial / (2 * cfg.bilateral_sxy**2) - colour / (2 * cfg.bilateral_srgb**2))

    norms = {}
    for name, k in (("g", k_g), ("b", k_b)):
        norms[name] = [1.0 / math.sqrt(sum(k(i, j) for j in range(n))) for i in range(n)]
    u = [[float(unary[lab, y, x]) for lab in range(n_labels)] for (y, x) in pix]

    def softmax(row: list[float]) -> list[float]:
        m = max(row)
        e = [math.exp(v - m) for v in row]
        return [v / sum(e) for v in e]

    q = [softmax([-v for v in row]) for row in u]
    for _ in range(cfg.iterations):
        new = []
        for i in range(n):
            logits = []
            for lab in range(n_labels):
                msg_g = sum(k_g(i, j) * norms["g"][j] * q[j][lab] for j in range(n)) * norms["g"][i]
                msg_b = sum(k_b(i, j) * norms["b"][j] * q[j][lab] for j in range(n)) * norms["b"][i]
                logits.append(-u[i][lab] + cfg.gaussian_compat * msg_g + cfg.bilateral_compat * msg_b)
            new.append(softmax(logits))
        q = new
    return torch.tensor(q, dtype=torch.float64).T.reshape(n_labels, h, w)


def test_the_exact_crf_equals_a_loop_over_every_pixel_pair() -> None:
    g = torch.Generator().manual_seed(0)
    unary = torch.rand(3, 4, 5, generator=g, dtype=torch.float64) * 3
    image = torch.rand(3, 4, 5, generator=g, dtype=torch.float64) * 255
    cfg = CRFSettings(iterations=3, bilateral_sxy=2.0, bilateral_srgb=60.0, gaussian_sxy=1.5)
    got = dense_crf(unary, image, cfg)
    assert got.dtype == torch.float64 and got.shape == (3, 4, 5)
    torch.testing.assert_close(got, naive_dense_crf(unary, image, cfg), atol=1e-12, rtol=0)
    torch.testing.assert_close(got.sum(0), torch.ones(4, 5, dtype=torch.float64))


def test_zero_iterations_return_the_unary_argmax() -> None:
    g = torch.Generator().manual_seed(1)
    unary = torch.rand(4, 6, 7, generator=g) * 5
    q = dense_crf(unary, torch.rand(3, 6, 7, generator=g) * 255, CRFSettings(iterations=0))
    torch.testing.assert_close(q, torch.softmax(-unary, dim=0))
    assert torch.equal(q.argmax(0), unary.argmin(0))


def test_unary_from_labels_by_hand() -> None:
    unary = unary_from_labels(torch.tensor([[0, 2]]), 3, gt_prob=0.7)
    assert unary.shape == (3, 1, 2)
    assert unary[:, 0, 0].tolist() == pytest.approx([-math.log(0.7), -math.log(0.15), -math.log(0.15)])
    assert unary[:, 0, 1].tolist() == pytest.approx([-math.log(0.15), -math.log(0.15), -math.log(0.7)])
    assert torch.equal(unary_from_labels(torch.zeros(2, 2, dtype=torch.long), 1), torch.zeros(1, 2, 2))


def _edge_scene(h: int = 16, w: int = 32, edge: int = 16, blurred_at: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark left half and a bright right half (edge at column ``edge``), and a probability map of class 1 that
    rises smoothly around column ``blurred_at`` (its argmax boundary sits there, left of the edge)."""
    image = torch.full((3, h, w), 40.0)
    image[:, :, edge:] = 200.0
    x = torch.arange(w, dtype=torch.float32).expand(h, w)
    p1 = torch.sigmoid((x - blurred_at + 0.5) / 2.0)
    probs = torch.stack([1 - p1, p1])
    return image, probs


@pytest.mark.parametrize("exact_pixels", [4096, 64], ids=["exact", "approximate"])
def test_crf_moves_a_blurred_boundary_onto_the_colour_edge(exact_pixels: int) -> None:
    image, probs = _edge_scene()
    before = probs.argmax(0)
    assert (before[:, 11:16] == 1).all()  # the blurred map puts the boundary 5 columns left of the edge
    cfg = CRFSettings(exact_pixels=exact_pixels)
    after = dense_crf(-probs.log(), image, cfg).argmax(0)
    expected = torch.zeros_like(after)
    expected[:, 16:] = 1
    assert torch.equal(after, expected)


def test_the_large_image_approximation_agrees_with_the_exact_crf() -> None:
    """Three colour regions (with colour noise) and a label map with 30% of its pixels relabelled at random: the
    exact CRF and its approximation (8 x 8 = 64 bilateral sources, a stride of 6 px) both recover the regions."""
    g = torch.Generator().manual_seed(2)
    h, w = 40, 48
    image = torch.zeros(3, h, w)
    image[0, :, 20:] = 180.0
    image[2, 25:, :] = 120.0
    image += torch.rand(3, h, w, generator=g) * 20
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, 20:] = 1
    truth[25:, :] = 2
    noisy = torch.where(torch.rand(h, w, generator=g) < 0.3, torch.randint(0, 3, (h, w), generator=g), truth)
    assert (noisy == truth).float().mean() < 0.85
    exact = crf_refine_labels(image / 255, noisy, 3, CRFSettings(exact_pixels=h * w))
    approx = crf_refine_labels(image / 255, noisy, 3, CRFSettings(exact_pixels=64))
    assert torch.equal(exact, truth)
    assert (approx == truth).float().mean() > 0.98


@pytest.mark.parametrize("exact_pixels", [4096, 16], ids=["exact", "approximate"])
def test_maps_refined_together_equal_each_refined_alone(exact_pixels: int) -> None:
    """Several unaries on one image (the pseudo-labels' two thresholded maps) share the kernels: each map's
    marginals equal those of its own call, and so do the refined labels."""
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 6, 7, generator=g, dtype=torch.float64) * 255
    unaries = torch.rand(3, 4, 6, 7, generator=g, dtype=torch.float64) * 3
    cfg = CRFSettings(iterations=4, bilateral_sxy=3.0, bilateral_srgb=40.0, gaussian_sxy=1.5, exact_pixels=exact_pixels)
    together = dense_crf(unaries, image, cfg)
    assert together.shape == (3, 4, 6, 7)
    for b in range(3):
        torch.testing.assert_close(together[b], dense_crf(unaries[b], image, cfg), atol=1e-12, rtol=0)
    labels = torch.randint(0, 4, (2, 6, 7), generator=g)
    refined = crf_refine_labels(image / 255, labels, 4, cfg)
    assert refined.shape == (2, 6, 7)
    for b in range(2):
        assert torch.equal(refined[b], crf_refine_labels(image / 255, labels[b], 4, cfg))
    assert not torch.equal(refined[0], labels[0])  # the CRF did change the map (a bound that can fail)


def test_the_crf_benchmark_times_three_paths_that_give_the_same_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/crf_refine.py: the former kernel construction and the per-map calls give the joint call's labels
    (the script stops otherwise), and its patch of the kernel construction is undone."""
    from fewlabels.methods.cct import crf

    before = crf._gaussian_matrix
    bench = load_benchmark("crf_refine", monkeypatch)
    result = bench.main(["--side", "20", "--labels", "3", "--rounds", "1"])
    assert crf._gaussian_matrix is before
    assert set(result) >= {"before_over_together", "separate_over_together", "together_s"}
    assert all(v > 0 for v in result.values())
    f = torch.rand(7, 5, dtype=torch.float64)
    s = torch.rand(4, 5, dtype=torch.float64)
    torch.testing.assert_close(crf._gaussian_matrix(f, s), bench.old_gaussian_matrix(f, s), atol=1e-12, rtol=0)
