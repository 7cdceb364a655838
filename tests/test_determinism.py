"""core.determinism: the one-off training context restores the caller's state and reproduces its results."""

from __future__ import annotations

import pytest
import torch

from layersync.core.determinism import deterministic_cpu


def _state() -> tuple[int, bool, bool, torch.Tensor]:
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_rng_state())


@pytest.fixture
def caller_state():
    """A caller with 2 threads, determinism off and a used RNG; put back as it was after the test."""
    saved = _state()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(1234)
    torch.rand(3)
    yield _state()
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    torch.set_rng_state(saved[3])


def _assert_restored(before, after) -> None:
    assert after[:3] == before[:3]
    assert torch.equal(after[3], before[3])


def _train_once() -> torch.Tensor:
    nn = torch.nn
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))  # dropout draws too
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_inside_one_thread_deterministic_and_seeded(caller_state):
    with deterministic_cpu(7):
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        drawn = torch.rand(5)
    assert torch.equal(drawn, torch.rand(5, generator=torch.Generator().manual_seed(7)))


def test_restores_threads_determinism_and_rng_state(caller_state):
    with deterministic_cpu(0):
        torch.rand(100)
    _assert_restored(caller_state, _state())


def test_restores_everything_when_the_body_raises(caller_state):
    with pytest.raises(RuntimeError, match="boom"):
        with deterministic_cpu(0):
            torch.rand(100)
            raise RuntimeError("boom")
    _assert_restored(caller_state, _state())


def test_restores_a_deterministic_warn_only_caller(caller_state):
    torch.use_deterministic_algorithms(True, warn_only=True)
    before = _state()
    with deterministic_cpu(0):
        pass
    _assert_restored(before, _state())


def test_two_runs_give_identical_results_whatever_the_caller_drew(caller_state):
    with deterministic_cpu(3):
        first = _train_once()
    torch.rand(17)  # the caller's RNG moves on; the next run must not see it
    with deterministic_cpu(3):
        again = _train_once()
    with deterministic_cpu(4):
        other = _train_once()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_fit_classifier_is_reproducible_learns_and_leaves_the_caller_alone():
    from layersync.core.determinism import fit_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long()  # a linearly separable toy task
    rng_before, threads = torch.get_rng_state(), torch.get_num_threads()
    fit = lambda seed: fit_classifier(lambda: torch.nn.Linear(4, 2), x, y, seed=seed, epochs=20,  # noqa: E731
                                      batch_size=16, peak_lr=0.1, weight_decay=0.0)
    a, b, c = fit(0), fit(0), fit(1)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert not a.training and (a(x).argmax(1) == y).float().mean() > 0.95
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.get_num_threads() == threads

