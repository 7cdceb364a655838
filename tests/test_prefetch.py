"""Per-sample randomness and the input pipeline: a sample's draws follow (seed, step, slot) only, each process
loads only its own slots, and the prefetch thread hands back exactly what a synchronous load would."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from layersync.core.interpolants import Interpolant
from layersync.core.prefetch import Prefetcher, load_micro_batches
from layersync.core.sample_rng import normal, randint, sample_keys, uniform
from layersync.core.sra import SRA
from layersync.core.trainer import Batch, IndexStream, TensorSource


def test_keys_depend_on_seed_step_and_slot_only():
    keys = sample_keys(3, 5, torch.arange(8))
    assert keys.dtype == torch.int64 and len(set(keys.tolist())) == 8
    assert torch.equal(sample_keys(3, 5, torch.arange(4, 8)), keys[4:])  # whatever else is drawn with it
    for other in (sample_keys(4, 5, torch.arange(8)), sample_keys(3, 6, torch.arange(8))):
        assert not (other == keys).any()
    assert torch.equal(uniform(keys[4:], "flip"), uniform(keys, "flip")[4:])
    assert torch.equal(normal(keys[4:], "noise", (3, 2)), normal(keys, "noise", (3, 2))[4:])


def test_streams_are_uniform_normal_and_independent_of_each_other():
    keys = sample_keys(0, 0, torch.arange(100_000))
    u, v = uniform(keys, "a"), uniform(keys, "b")
    assert 0 <= float(u.min()) and float(u.max()) < 1
    counts = np.histogram(u.numpy(), bins=10, range=(0, 1))[0]
    assert np.abs(counts - 10_000).max() < 500  # ±5 σ of a binomial(1e5, 0.1)
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.015  # 1/√n ≈ 0.003
    z = normal(keys[:2000], "noise", (50,))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    high = torch.tensor([1, 2, 3, 7]).repeat(25_000)
    r = randint(keys, "crop", high)
    assert (r >= 0).all() and (r < high).all() and set(r[high == 7].tolist()) == set(range(7))


class AugmentedSource(TensorSource):
    """A source with a per-sample random shift; records which indices it was asked for."""

    def __init__(self, x, y):
        super().__init__(x, y)
        self.asked: list[list[int]] = []

    def batch(self, indices, keys):
        self.asked.append(indices.tolist())
        b = super().batch(indices)
        return Batch(b.x + uniform(keys, "shift")[:, None, None].float(), b.cond)


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
def test_each_process_loads_only_its_slots_and_together_they_give_the_one_process_batch(time_sampling):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, 2, generator=g), torch.randint(0, 4, (20,), generator=g)
    stream, interpolant = IndexStream(20, seed=1), Interpolant(time_sampling=time_sampling)

    def load(source, first_slot, micro, accum):
        return load_micro_batches(source, stream, interpolant, 0.3, seed=1, step=7, global_batch_size=8,
                                  first_slot=first_slot, micro_batch=micro, accum=accum)

    whole = load(AugmentedSource(x, y), 0, 8, 1)[0]
    ranks = [AugmentedSource(x, y) for _ in range(2)]
    parts = [mb for r, source in enumerate(ranks) for mb in load(source, 4 * r, 2, 2)]  # 2 processes × 2
    expected = stream.take(7 * 8, 8).tolist()
    assert [source.asked for source in ranks] == [[expected[:4]], [expected[4:]]]  # one read of its own 4
    for name in ("noise", "t", "drop", "keys"):
        assert torch.equal(torch.cat([getattr(mb, name) for mb in parts]), getattr(whole, name)), name
    assert torch.equal(torch.cat([mb.batch.x for mb in parts]), whole.batch.x)
    assert torch.equal(torch.cat([mb.batch.cond for mb in parts]), whole.batch.cond)
    assert 0 < whole.drop.sum() < 8 and whole.t.unique().numel() == 8


def test_prefetcher_hands_back_each_step_restarts_on_a_jump_and_raises_the_loaders_error():
    threads = set()

    def load(step):
        threads.add(threading.current_thread().name)
        if step == 6:
            raise KeyError("bad sample 6")
        return step * 10

    prefetch = Prefetcher(load, stop=8, depth=2)
    assert [prefetch.get(s) for s in (0, 1, 2)] == [0, 10, 20]
    assert prefetch.get(5) == 50  # a jump (a resume) restarts the thread there
    with pytest.raises(KeyError, match="bad sample 6"):
        prefetch.get(6)
    assert prefetch.get(4) == 40 and prefetch.get(9) == 90  # past `stop`: loaded on the caller's thread
    prefetch.close()
    assert threads == {"layersync-prefetch", threading.current_thread().name} and prefetch.wait_s > 0


def test_sra_teacher_time_follows_the_sample_keys():
    sra = SRA(1, 2, hidden_size=4, time_gap=0.5)
    keys = sample_keys(0, 3, torch.arange(6))
    t = torch.linspace(0.1, 1.0, 6)
    t_teacher = sra.teacher_time(t, keys)
    assert torch.equal(sra.teacher_time(t[3:], keys[3:]), t_teacher[3:])
    assert ((t_teacher <= t) & (t_teacher >= (t - 0.5).clamp(min=0))).all()
    expected = (t - uniform(keys, "sra/teacher_time").float() * 0.5).clamp(min=0)
    torch.testing.assert_close(t_teacher, expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_micro_batches_copy_to_the_gpu_unchanged():
    source = TensorSource(torch.randn(16, 3, 2), torch.randint(0, 4, (16,)))
    mb = load_micro_batches(source, IndexStream(16, 0), Interpolant(), 0.1, 0, 0, 8, 0, 8, 1)[0]
    pinned = mb.pin()
    assert pinned.noise.is_pinned() and pinned.batch.x.is_pinned() and pinned.batch.cond.is_pinned()
    on_gpu = pinned.to("cuda")
    torch.cuda.synchronize()
    for name in ("noise", "t", "drop"):
        assert torch.equal(getattr(on_gpu, name).cpu(), getattr(mb, name)), name
    assert torch.equal(on_gpu.batch.x.cpu(), mb.batch.x) and on_gpu.keys.device.type == "cpu"


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
def test_times_from_uniform_draws_follow_the_law_of_sample_t(time_sampling):
    interpolant = Interpolant(time_sampling=time_sampling, logit_mean=0.3, logit_std=0.8, t_min=0.1, t_max=0.9)
    u = torch.tensor([0.0, 0.5, 0.841344746068543], dtype=torch.float64)  # Φ(−∞), Φ(0), Φ(1)
    law = u if time_sampling == "uniform" else torch.sigmoid(torch.tensor([-torch.inf, 0.3, 0.3 + 0.8]))
    expected = 0.1 + 0.8 * law.double()
    torch.testing.assert_close(interpolant.t_from_uniform(u), expected.float())
    t = interpolant.t_from_uniform(uniform(sample_keys(0, 0, torch.arange(50_000)), "t"))
    reference = interpolant.sample_t(50_000, "cpu", generator=torch.Generator().manual_seed(0))
    q = torch.linspace(0.05, 0.95, 19)
    torch.testing.assert_close(t.quantile(q), reference.quantile(q), atol=0.01, rtol=0)
