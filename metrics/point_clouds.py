"""Point-cloud generation metrics on the Chamfer distance: MMD, coverage and 1-NN accuracy.

    CD(X, Y) = mean_{x∈X} min_{y∈Y} ‖x − y‖² + mean_{y∈Y} min_{x∈X} ‖x − y‖²    (means, as PointFlow's code)
    MMD   = mean_{r∈R} min_{g∈G} CD(g, r)              fidelity: each reference has a close sample (low: good)
    COV   = |{argmin_{r∈R} CD(g, r) : g ∈ G}| / |R|    diversity: share of references nearest to some sample
    1-NNA = leave-one-out 1-NN accuracy telling G from R within G ∪ R; 0.5 ideal, 1.0 fully separable
(Achlioptas et al. 2018, "Learning Representations and Generative Models for 3D Point Clouds", §4, for MMD
and COV; Yang et al. 2019, "PointFlow", §5.1, for 1-NNA.) Sets may differ in size: each is padded to one
length with an (S, N) bool mask, True = real point, and padded points never enter a distance.
"""

from __future__ import annotations

import torch

from layersync.core.errors import UserValueError


def chamfer_matrix(a: torch.Tensor, b: torch.Tensor, a_mask: torch.Tensor | None = None,
                   b_mask: torch.Tensor | None = None) -> torch.Tensor:
    """CD between every set of `a` (A, N, 3) and every set of `b` (B, M, 3): (A, B) float64."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[-1] != b.shape[-1]:
        raise UserValueError(f"point sets must be (S, N, dim) with one dim, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
    a_mask = torch.ones(a.shape[:2], dtype=torch.bool) if a_mask is None else a_mask.cpu()
    b_mask = torch.ones(b.shape[:2], dtype=torch.bool) if b_mask is None else b_mask.cpu()
    if not bool(a_mask.any(1).all() and b_mask.any(1).all()):
        raise UserValueError("every point set needs at least one real point (a mask row is all False)")
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i in range(len(a)):  # one (B, N_i, M) block at a time keeps memory at B·N·M
        pa = a[i, a_mask[i]]  # (N_i, 3)
        d = torch.cdist(pa[None].expand(len(b), -1, -1), b).square()  # (B, N_i, M)
        d = d.masked_fill(~b_mask[:, None, :], float("inf"))
        a_to_b = d.min(dim=2).values.mean(dim=1)  # (B,) each real point of a to its nearest in b
        b_to_a = d.min(dim=1).values  # (B, M) each point of b to its nearest in a
        b_to_a = torch.where(b_mask, b_to_a, 0.0)  # padded points of b (inf) count nothing
        out[i] = a_to_b + b_to_a.sum(1) / b_mask.sum(1)
    return out


def mmd_coverage_1nna(gen_ref: torch.Tensor, gen_gen: torch.Tensor,
                      ref_ref: torch.Tensor) -> dict[str, float]:
    """MMD, COV and 1-NNA from the (G, R), (G, G) and (R, R) distance matrices (module docstring)."""
    g, r = gen_ref.shape
    if gen_gen.shape != (g, g) or ref_ref.shape != (r, r):
        raise UserValueError(f"distance matrices do not match: gen_ref {tuple(gen_ref.shape)}, gen_gen "
                             f"{tuple(gen_gen.shape)}, ref_ref {tuple(ref_ref.shape)}")
    if g < 2 or r < 2:
        raise UserValueError(f"1-NNA needs at least 2 generated and 2 reference sets, got {g} and {r}")
    mmd = gen_ref.min(dim=0).values.mean().item()
    cov = gen_ref.argmin(dim=1).unique().numel() / r
    # Leave-one-out over G ∪ R: the diagonal (each set to itself) is excluded with +inf.
    full = torch.cat([torch.cat([gen_gen, gen_ref], 1), torch.cat([gen_ref.T, ref_ref], 1)], 0)  # (G+R, G+R)
    full = full.clone().fill_diagonal_(float("inf"))
    is_gen = torch.arange(g + r) < g
    nearest_is_gen = is_gen[full.argmin(dim=1)]
    nna = (nearest_is_gen == is_gen).double().mean().item()
    return {"mmd_cd": mmd, "cov_cd": cov, "nna_cd": nna}


def point_cloud_metrics(gen: torch.Tensor, ref: torch.Tensor, gen_mask: torch.Tensor | None = None,
                        ref_mask: torch.Tensor | None = None) -> dict[str, float]:
    """MMD-CD, COV-CD and 1-NNA-CD of generated sets `gen` (G, N, 3) against references `ref` (R, M, 3)."""
    gen_ref = chamfer_matrix(gen, ref, gen_mask, ref_mask)
    return mmd_coverage_1nna(gen_ref, chamfer_matrix(gen, gen, gen_mask, gen_mask),
                             chamfer_matrix(ref, ref, ref_mask, ref_mask))
