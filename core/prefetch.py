"""What one process feeds a training step, loaded ahead of the step in a background thread.

A step's global batch has slots j ∈ [0, global_batch_size); process r of R with accumulation A owns the
contiguous slots [r·A·m, (r+1)·A·m) (m = micro-batch), and reads only those samples. Every draw of slot j
(the source's flip or crop, ε, t, label dropout, and through `keys` any regularizer's) is a function of
(seed, step, j) (core/sample_rng.py): the thread may run ahead by any amount and any R or A sees the same
numbers.

On CUDA the loaded tensors are pinned, so `MicroBatch.to(device)` copies without blocking the host. The time
`Prefetcher.get` spends waiting is the step's data wait, logged as `data_wait_s` and `data_wait_frac`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch

from .sample_rng import normal, sample_keys, uniform


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch and its draws; `keys` stay on the CPU (regularizers hash them there)."""

    batch: Any  # trainer.Batch
    noise: torch.Tensor  # (B, ...) like batch.x
    t: torch.Tensor  # (B,)
    drop: torch.Tensor  # (B,) bool: this sample's condition is replaced by the null one
    keys: torch.Tensor  # (B,) int64 per-sample RNG keys

    def pin(self) -> MicroBatch:
        return MicroBatch(_map(self.batch, torch.Tensor.pin_memory), self.noise.pin_memory(),
                          self.t.pin_memory(), self.drop.pin_memory(), self.keys)

    def to(self, device) -> MicroBatch:
        copy = lambda v: v.to(device, non_blocking=True)  # noqa: E731 - from pinned memory: asynchronous
        return MicroBatch(self.batch.to(device), copy(self.noise), copy(self.t), copy(self.drop), self.keys)


def _map(batch, fn):
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return replace(batch, **{k: fn(v) for k, v in values.items() if v is not None})


def load_micro_batches(source, stream, interpolant, cond_dropout: float, seed: int, step: int,
                       global_batch_size: int, first_slot: int, micro_batch: int,
                       accum: int) -> list[MicroBatch]:
    """This process's `accum` micro-batches of `step`: slots [first_slot, first_slot + accum·micro_batch)."""
    count = accum * micro_batch
    slots = torch.arange(first_slot, first_slot + count)
    keys = sample_keys(seed, step, slots)  # (count,)
    indices = stream.take(step * global_batch_size + first_slot, count)
    batch = source.batch(indices, keys)
    noise = normal(keys, "noise", tuple(batch.x.shape[1:]))  # (count, ...)
    t = interpolant.t_from_uniform(uniform(keys, "t"))  # (count,)
    drop = uniform(keys, "drop") < cond_dropout  # (count,)
    out = []
    for m in range(accum):
        sl = slice(m * micro_batch, (m + 1) * micro_batch)
        out.append(MicroBatch(batch.select(sl), noise[sl], t[sl], drop[sl], keys[sl]))
    return out


class Prefetcher:
    """Calls `load(step)` for steps [first, stop) in a background thread, at most `depth` ahead.

    `get(step)` returns `load(step)`; asked for another step than the next one (a resume, a direct call), it
    restarts the thread there. An exception in `load` is raised by `get` with its traceback. Steps ≥ `stop`
    load on the caller's thread.
    """

    def __init__(self, load: Callable[[int], Any], stop: int, depth: int = 2):
        self.load, self.stop, self.depth = load, stop, depth
        self.wait_s = 0.0  # seconds `get` has waited, in total
        self._thread: threading.Thread | None = None
        self._expect = -1

    def get(self, step: int) -> Any:
        t0 = time.perf_counter()
        try:
            if step >= self.stop:
                return self.load(step)
            if self._thread is None or step != self._expect:
                self._start(step)
            got, value, error = self._queue.get()
            assert got == step, (got, step)  # the thread loads consecutive steps from `_expect`
            if error is not None:
                self.close()
                raise error
            self._expect = step + 1
            return value
        finally:
            self.wait_s += time.perf_counter() - t0

    def _start(self, first: int) -> None:
        self.close()
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(first, self._queue, self._stopping),
                                        name="layersync-prefetch", daemon=True)
        self._expect = first
        self._thread.start()

    def _run(self, first: int, out: queue.Queue, stopping: threading.Event) -> None:
        for step in range(first, self.stop):
            try:
                item = (step, self.load(step), None)
            except BaseException as error:  # handed to the training thread, which raises it
                item = (step, None, error)
            while not stopping.is_set():
                try:
                    out.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if stopping.is_set() or item[2] is not None:
                return

    def close(self) -> None:
        """Stop the thread (after the load under way, if any)."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
