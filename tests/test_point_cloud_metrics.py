"""Chamfer distance, MMD, coverage and 1-NNA against loops over the documented formulas."""

from __future__ import annotations

import pytest
import torch

from layersync.metrics import chamfer_matrix, mmd_coverage_1nna, point_cloud_metrics


def chamfer_by_loops(x: list[list[float]], y: list[list[float]]) -> float:
    """CD(X, Y) = mean_x min_y ‖x − y‖² + mean_y min_x ‖x − y‖², point by point in Python floats."""
    def sq(p, q):
        return sum((a - b) ** 2 for a, b in zip(p, q))
    return (sum(min(sq(p, q) for q in y) for p in x) / len(x)
            + sum(min(sq(p, q) for p in x) for q in y) / len(y))


def test_chamfer_matrix_equals_the_formula_and_ignores_padded_points():
    g = torch.Generator().manual_seed(0)
    sizes_a, sizes_b = [4, 7, 2], [5, 3]
    a, b = torch.randn(3, 7, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    a_mask = torch.arange(7)[None] < torch.tensor(sizes_a)[:, None]  # (3, 7)
    b_mask = torch.arange(5)[None] < torch.tensor(sizes_b)[:, None]  # (2, 5)
    a[~a_mask], b[~b_mask] = 1e3, -1e3  # padding far away: it would dominate any distance it entered
    got = chamfer_matrix(a, b, a_mask, b_mask)
    expected = torch.tensor([[chamfer_by_loops(a[i, :na].tolist(), b[j, :nb].tolist())
                              for j, nb in enumerate(sizes_b)] for i, na in enumerate(sizes_a)],
                            dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chamfer_matrix(b, a, b_mask, a_mask), expected.T, rtol=1e-12, atol=1e-12)


def test_mmd_coverage_and_1nna_on_a_hand_made_distance_matrix():
    # 3 generated, 2 reference sets. Nearest reference of each sample: r0, r0, r1 → coverage 2/2.
    gen_ref = torch.tensor([[1.0, 5.0], [2.0, 6.0], [7.0, 3.0]], dtype=torch.float64)
    gen_gen = torch.tensor([[0.0, 0.5, 9.0], [0.5, 0.0, 9.0], [9.0, 9.0, 0.0]], dtype=torch.float64)
    ref_ref = torch.tensor([[0.0, 4.0], [4.0, 0.0]], dtype=torch.float64)
    out = mmd_coverage_1nna(gen_ref, gen_gen, ref_ref)
    assert out["mmd_cd"] == pytest.approx((1.0 + 3.0) / 2)  # each reference's closest sample: g0 (1), g2 (3)
    assert out["cov_cd"] == 1.0
    # Leave-one-out nearest: g0→g1 ✓, g1→g0 ✓, g2→r1 ✗, r0→g0 ✗, r1→g2 ✗: 2 of 5 correct.
    assert out["nna_cd"] == pytest.approx(2 / 5)


def test_samples_that_copy_the_references_score_perfectly_and_distant_ones_do_not():
    ref = torch.randn(6, 10, 3, generator=torch.Generator().manual_seed(1))
    copies = point_cloud_metrics(ref.clone(), ref)
    assert copies == {"mmd_cd": 0.0, "cov_cd": 1.0, "nna_cd": 0.0}  # each set's nearest is its copy
    far = point_cloud_metrics(ref[:3] + 100.0, ref)
    assert far["cov_cd"] == pytest.approx(1 / 6) and far["nna_cd"] == 1.0 and far["mmd_cd"] > 1e4


def test_metric_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="at least one real point"):
        chamfer_matrix(torch.zeros(2, 3, 3), torch.zeros(1, 3, 3), torch.tensor([[True] * 3, [False] * 3]))
    with pytest.raises(ValueError, match="at least 2 generated"):
        point_cloud_metrics(torch.zeros(1, 3, 3), torch.zeros(4, 3, 3))
