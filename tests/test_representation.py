"""Per-block analysis (probes, CKA, cosine, pruning), the paper's pair rules, and `--align.layersync=auto`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from layersync.core.align import AlignContext, LayerSync
from layersync.core.auto_pair import RECORD, AutoLayerSync
from layersync.core.interpolants import Interpolant
from layersync.core.models import DiT, DiTConfig
from layersync.core.trainer import TensorSource, TrainConfig, Trainer
from layersync.metrics.probes import linear_cka
from layersync.metrics.representation import (ProbeSet, analyze_blocks, block_features, choose_pair,
                                              cosine_matrix, kept_tokens, min_pair_gap, pair_bounds,
                                              pair_chooser, pruned_flow_loss)
from layersync.metrics.representation_report import write_report


def tiny(depth: int = 4, gates: bool = True) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=(4, 4), in_channels=2, patch_size=2, depth=depth, hidden_size=16,
                          num_heads=2, num_classes=3))
    if gates:  # off the adaLN-Zero identity, so blocks differ
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for blk in model.blocks:
                blk.adaLN_modulation[-1].weight.normal_(0, 0.3, generator=g)
            model.final_layer.linear.weight.normal_(0, 0.3, generator=g)
    return model


def probe_set(n: int = 60) -> ProbeSet:
    """Three classes whose mean pixel differs: a linear probe on any block can find them at low noise."""
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(n) % 3
    x = 0.3 * torch.randn(n, 2, 4, 4, generator=g) + (labels.float() - 1)[:, None, None, None]
    return ProbeSet(x, labels, labels, "toy class")


def test_block_features_are_the_models_captured_streams_at_the_null_condition():
    model, probe, interp = tiny(), probe_set(), Interpolant()
    feats = block_features(model, interp, probe, t=0.3, seed=5, batch_size=25)
    eps = torch.randn(probe.x.shape, generator=torch.Generator().manual_seed(5))
    t = torch.full((60,), 0.3)
    with torch.no_grad():
        out = model(interp.x_t(probe.x, eps, t), t, probe.labels, capture=(1, 2, 3, 4),
                    force_drop=torch.ones(60, dtype=torch.bool))
    for k in range(1, 5):
        torch.testing.assert_close(feats[k], out.hidden[k], rtol=1e-5, atol=1e-6)


def test_cosine_matrix_is_the_mean_token_cosine():
    g = torch.Generator().manual_seed(0)
    hidden = {1: torch.randn(5, 3, 4, generator=g), 2: torch.randn(5, 3, 4, generator=g)}
    a, b = hidden[1].double().numpy(), hidden[2].double().numpy()
    want = ((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).mean()
    m = cosine_matrix(hidden)
    assert m[0, 1] == m[1, 0] == pytest.approx(want, rel=1e-12) and m[0, 0] == 1.0


def test_pruning_a_block_of_a_fresh_model_changes_nothing_but_of_a_trained_one_does():
    interp, probe = Interpolant(), probe_set()
    fresh = tiny(gates=False)  # adaLN-Zero: every block is the identity
    unpruned = pruned_flow_loss(fresh, interp, probe, None)
    assert pruned_flow_loss(fresh, interp, probe, 2) == pytest.approx(unpruned, rel=1e-6)
    moved = tiny()
    full, skipped = pruned_flow_loss(moved, interp, probe, None), pruned_flow_loss(moved, interp, probe, 2)
    assert abs(skipped - full) > 1e-3 * full
    assert pruned_flow_loss(moved, interp, probe, None) == full  # the hook is removed afterwards


def test_analysis_holds_probes_cka_cosine_and_pruning_for_every_block_and_t():
    model, probe = tiny(), probe_set()
    a = analyze_blocks(model, Interpolant(), probe, ts=(0.1, 0.9), seed=0)
    assert a["blocks"] == [1, 2, 3, 4] and a["t"] == [0.1, 0.9]
    assert np.shape(a["probe_accuracy"]) == (2, 4) and np.shape(a["cka"]) == (2, 4, 4)
    assert min(a["probe_accuracy"][0]) >= 0.9  # the class is plain in x at t = 0.1
    feats = block_features(model, Interpolant(), probe, 0.9, seed=0)
    assert a["cka"][1][0][3] == pytest.approx(linear_cka(feats[1], feats[4]), rel=1e-9)
    assert np.allclose(np.diag(a["cosine"][0]), 1.0) and len(a["pruning"]["skip"]) == 4


def test_streams_beyond_the_budget_keep_evenly_spaced_tokens_and_probes_keep_every_token():
    # SiT-XL/2 on 512 ImageNet latents: 32 of its 256 tokens fit 2 GiB; the digits fit whole.
    assert kept_tokens(512, 256, 1152, 28).tolist() == list(range(0, 256, 8))
    assert kept_tokens(1797, 16, 96, 8) is None and kept_tokens(10, 4, 8, 2, budget=None) is None
    assert kept_tokens(10, 4, 8, 2, budget=1).tolist() == [0]
    model, probe, interp = tiny(), probe_set(), Interpolant()
    whole = analyze_blocks(model, interp, probe, ts=(0.5,), pruning=False)
    budget = 4 * 16 * 4 * 60 * 2  # two tokens of four per example (width 16, 4 blocks, 60 examples)
    part = analyze_blocks(model, interp, probe, ts=(0.5,), pruning=False, budget=budget)
    assert whole["cka_tokens"] == "all" and part["cka_tokens"] == [0, 2]
    assert part["probe_accuracy"] == whole["probe_accuracy"]
    feats = block_features(model, interp, probe, 0.5, seed=0)
    assert part["cka"][0][0][3] == pytest.approx(linear_cka(feats[1][:, [0, 2]], feats[4][:, [0, 2]]), rel=1e-9)
    assert part["cka"][0][0][3] != pytest.approx(whole["cka"][0][0][3], rel=1e-6)


def test_report_writes_json_with_the_other_run_and_pictures(tmp_path):
    a = analyze_blocks(tiny(), Interpolant(), probe_set(), ts=(0.5,), pruning=False)
    paths = write_report(tmp_path, a, against=("other_run", a))
    record = json.loads((tmp_path / "analysis.json").read_text())
    assert record["against"]["run"] == "other_run" and record["against"]["cka"] == a["cka"]
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def analysis(acc: list[float], cka: float = 0.99) -> dict:
    n = len(acc)
    m = np.full((n, n), cka)
    np.fill_diagonal(m, 1.0)
    return {"blocks": list(range(1, n + 1)), "t": [0.5], "task": "x", "probe_accuracy": [acc],
            "cka": [m.tolist()]}


def test_pair_bounds_follow_the_paper():
    assert pair_bounds(28) == (3, 22)  # SiT-XL: 8:16 lies inside
    assert pair_bounds(8) == (2, 6)
    with pytest.raises(ValueError, match="depth 3"):
        pair_bounds(3)


def test_teacher_is_the_best_allowed_block_and_student_the_deepest_with_a_real_gap():
    # Block 8 is the best but decodes (last 20% of 8 blocks = 7, 8); block 1 is never a student.
    acc = [0.10, 0.50, 0.70, 0.77, 0.80, 0.83, 0.95, 0.99]
    (student, teacher), reason = choose_pair(analysis(acc))
    assert (student, teacher) == (4, 6) and "teacher 6" in reason and "gap 0.060" in reason


def test_cka_gap_counts_when_accuracies_are_flat_and_no_gap_falls_back_to_the_largest():
    flat = [0.9] * 8
    # Teacher 4: the first block with room for a student 2 blocks before it; student 2 by CKA ≤ 0.9.
    assert choose_pair(analysis(flat, cka=0.5))[0] == (2, 4)
    pair, reason = choose_pair(analysis([0.5, 0.88, 0.9, 0.9, 0.9, 0.91, 0.9, 0.9]))
    assert pair == (2, 6) and "no allowed block before it has a real gap" in reason


def test_student_keeps_the_minimum_distance_from_its_teacher():
    assert [min_pair_gap(d) for d in (5, 8, 12, 24, 28)] == [2, 2, 3, 6, 7]
    # Block 5 has a real gap to teacher 6 but is its neighbour; the deepest allowed student is 4.
    pair, reason = choose_pair(analysis([0.1, 0.5, 0.5, 0.6, 0.7, 0.9, 0.95, 0.99]))
    assert pair == (4, 6) and "at least 2 blocks apart" in reason
    # 12 blocks: teacher ≤ 9, students ≥ 2 and ≤ teacher − 3, although block 8 has the gap.
    acc = [0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.9, 0.95, 0.97, 0.99]
    assert choose_pair(analysis(acc))[0] == (6, 9)
    with pytest.raises(ValueError, match="2 blocks apart"):
        pair_bounds(4)


def test_auto_regularizer_is_silent_before_warmup_then_aligns_the_chosen_pair_and_records_why(tmp_path):
    calls = []

    def choose(model):
        calls.append(1)
        return (2, 3), "because"

    with pytest.raises(ValueError, match="depth 4 leaves no"):  # refused when built, not after the warm-up
        AutoLayerSync(tiny(depth=4), choose, warmup_steps=5)
    reg = AutoLayerSync(tiny(depth=6), choose, warmup_steps=5, weight=0.5, run_dir=tmp_path)
    assert reg.blocks == (1, 2, 3, 4, 5, 6)
    g = torch.Generator().manual_seed(0)
    hidden = {k: torch.randn(2, 3, 8, generator=g) for k in range(1, 7)}
    loss, _ = reg(AlignContext(hidden=hidden, step=4))
    assert loss.item() == 0.0 and reg.chosen is None and not calls
    loss, logs = reg(AlignContext(hidden=hidden, step=5))
    want, _ = LayerSync([(2, 3)], weight=0.5)(AlignContext(hidden=hidden))
    assert loss.item() == pytest.approx(want.item()) and "layersync/cos_2_3" in logs
    reg(AlignContext(hidden=hidden, step=6))
    assert len(calls) == 1
    assert json.loads((tmp_path / RECORD).read_text()) == {"student": 2, "teacher": 3, "chosen_at_step": 5,
                                                           "layersync": "2:3", "reason": "because"}
    again = AutoLayerSync(tiny(depth=6), choose, warmup_steps=5)
    again.load_state_dict(reg.state_dict())  # as a resumed run: the pair is in the checkpoint
    assert again.chosen == (2, 3)
    again(AlignContext(hidden=hidden, step=9))
    assert len(calls) == 1


@dataclass(frozen=True)
class AutoRun:
    run_dir: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)


def train_auto(run_dir, steps: int) -> dict[int, float]:
    cfg = TrainConfig(seed=1, total_steps=steps, global_batch_size=8, lr=3e-3, ema_decay=0.9, log_every=1,
                      ckpt_every=3, keep_checkpoints=5)
    model = tiny(depth=6)
    probe = probe_set(48)
    interp = Interpolant()
    reg = AutoLayerSync(model, pair_chooser(probe, interp, ts=(0.3,)), warmup_steps=4, run_dir=run_dir)
    g = torch.Generator().manual_seed(3)
    source = TensorSource(torch.randn(32, 2, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g))
    Trainer(cfg, model, interp, source, run_dir, full_config=AutoRun(str(run_dir), cfg),
            regularizer=reg).fit()
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_auto_pair_resumes_exactly_across_the_choice(single_thread, tmp_path):
    whole = train_auto(tmp_path / "whole", 8)
    record = json.loads((tmp_path / "whole" / RECORD).read_text())
    assert record["chosen_at_step"] == 4 and 2 <= record["student"] < record["teacher"] <= 4
    for stop in (3, 6):  # a checkpoint before the choice, then one after it
        part = tmp_path / f"stop{stop}"
        train_auto(part, stop)
        resumed = train_auto(part, 8)
        for step in range(stop + 1, 9):
            assert resumed[step] == whole[step], (stop, step)
        assert json.loads((part / RECORD).read_text()) == record
