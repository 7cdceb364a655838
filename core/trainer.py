"""The training loop on Accelerate: flow loss + any regularizer, EMA, exact resume, logs and periodic samples."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import torch
from torch import nn

from . import checkpoint as ckpt
from . import fsdp as fsdp_lib
from . import telemetry
from .config import checked, save_json, to_dict
from .ema import EMA
from .errors import UserNotImplementedError, UserValueError
from .guard import NonFiniteError, NonFiniteGuard, all_finite
from .logs import RunLogger
from .prefetch import MicroBatch, Prefetcher, load_micro_batches
from .process_group import destroy_at_exit
from .stopping import TrainingStopped, stops_on_signals

log = logging.getLogger("layersync")


@dataclass(frozen=True)
@checked(seed=">= 0", total_steps=">= 1", global_batch_size=">= 1", grad_accum_steps=">= 1", lr=">= 0",
         warmup_steps=">= 0", weight_decay=">= 0", adam_betas="[0, 1)", grad_clip=">= 0", ema_decay="[0, 1]",
         log_every=">= 1", ckpt_every=">= 0", keep_checkpoints=">= 0", sample_every=">= 0", eval_every=">= 0",
         max_nonfinite_steps=">= 1")
class TrainConfig:
    """Optimisation and bookkeeping; SiT's settings are AdamW 1e-4, no decay, EMA 0.9999, batch 256."""

    seed: int = 0
    total_steps: int = 400_000
    global_batch_size: int = 256
    grad_accum_steps: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    ema_decay: float = 0.9999
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False
    log_every: int = 100
    ckpt_every: int = 10_000
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: only at the end
    max_nonfinite_steps: int = 20  # consecutive skipped steps (non-finite loss or grad norm) before a stop

    def __post_init__(self):
        if self.global_batch_size % self.grad_accum_steps:
            raise UserValueError(f"global_batch_size={self.global_batch_size} is not a multiple of "
                                 f"grad_accum_steps={self.grad_accum_steps}")


# Fields (at any depth) that may change between a run and its resumption without making the checkpoint
# foreign. A recipe adds its own top-level ones, which only touch sampling and evaluation, as a class attribute
# `resumable_keys: ClassVar[tuple[str, ...]]`.
RESUMABLE_CHANGES = {"total_steps", "log_every", "ckpt_every", "keep_checkpoints", "sample_every",
                     "eval_every", "compile", "run_dir", "max_nonfinite_steps"}


@dataclass(frozen=True)
class Batch:
    """One batch in model space. Every field but x may be None; all share the leading batch dim."""

    x: torch.Tensor  # (B, ...) data at t = 0
    cond: torch.Tensor | None = None  # (B,) labels or (B, D_text) text vectors
    raw: torch.Tensor | None = None  # raw media for REPA's encoder (or precomputed encoder tokens)
    token_mask: torch.Tensor | None = None  # (B, N) bool, True = real token (attention and alignment)
    loss_mask: torch.Tensor | None = None  # broadcastable to x, 1 = element counts in the flow loss

    def select(self, sl) -> "Batch":
        """Rows `sl` of every field."""
        return Batch(*(None if v is None else v[sl] for v in dataclasses.astuple(self, tuple_factory=list)))

    def to(self, device) -> "Batch":
        return Batch(*(None if v is None else v.to(device, non_blocking=True)
                       for v in (self.x, self.cond, self.raw, self.token_mask, self.loss_mask)))


class DataSource(Protocol):
    """Random access to a training set in model space. `keys` (B,) int64 are the samples' RNG keys: a source
    draws its flips and crops from them (core/sample_rng.py), never from a global generator, so the same
    sample gets the same draws in whichever process, micro-batch or thread it is loaded."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor, keys: torch.Tensor) -> Batch: ...


class TensorSource:
    """A data set held in memory as tensors: every Batch field as an (N, ...) tensor or None."""

    def __init__(self, x: torch.Tensor, cond: torch.Tensor | None = None, raw: torch.Tensor | None = None,
                 token_mask: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None):
        self.data = Batch(x, cond, raw, token_mask, loss_mask)
        for name, other in (("cond", cond), ("raw", raw), ("token_mask", token_mask), ("loss_mask", loss_mask)):
            if other is not None and len(other) != len(x):
                raise UserValueError(f"x has {len(x)} items but {name} has {len(other)}")

    def __len__(self) -> int:
        return len(self.data.x)

    def batch(self, indices: torch.Tensor, keys: torch.Tensor | None = None) -> Batch:
        """Rows `indices` (deterministic: `keys` are not used)."""
        return self.data.select(indices)


class IndexStream:
    """Epoch permutations of [0, n) laid end to end; the samples of step s are fixed by (seed, s)."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise UserValueError("the training set is empty")
        self.n, self.seed, self._cache = n, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._cache[epoch]

    def take(self, start: int, count: int) -> torch.Tensor:
        """Indices of global sample positions [start, start + count)."""
        pos = torch.arange(start, start + count)
        out = torch.empty(count, dtype=torch.long)
        for epoch in pos.div(self.n, rounding_mode="floor").unique().tolist():
            sel = pos.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perm(epoch)[pos[sel] % self.n]
        return out


def step_seed(seed: int, step: int) -> int:
    """One seed per (run, step) for draws that are not per sample (core/sample_rng.py): a model's own
    dropout layers (MDM's). Those depend on the process count; everything else does not."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Trainer:
    """Trains `model` on `source` with `interpolant` and an optional regularizer (LayerSync, SRA, …)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, interpolant, source: DataSource, run_dir,
                 full_config: Any, regularizer: nn.Module | None = None,
                 sample_fn: Callable[[nn.Module, int, Path], None] | None = None,
                 eval_fn: Callable[[nn.Module, int], dict] | None = None, accelerator=None):
        from accelerate import Accelerator

        self.cfg, self.interpolant, self.source = cfg, interpolant, source
        self.run_dir, self.full_config = Path(run_dir), full_config
        self.sample_fn, self.eval_fn = sample_fn, eval_fn
        if accelerator is None:
            mp = cfg.mixed_precision
            if mp == "auto":
                mp = "bf16" if torch.cuda.is_available() else "no"
            # cpu=True without CUDA: otherwise `accelerate launch --multi_gpu` on a CPU machine silently gives
            # every process a world of one.
            accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        self.acc = acc = accelerator
        destroy_at_exit()  # a launched run's gloo/NCCL group ends before the interpreter (core/process_group.py)
        if acc.distributed_type.name in ("DEEPSPEED", "MEGATRON_LM"):
            raise UserNotImplementedError(
                f"distributed_type {acc.distributed_type.name} is not supported; use DDP or FSDP "
                "(configs/accelerate/multi_gpu.yaml, multi_node.yaml, fsdp.yaml)")
        # FSDP2 sharding is done here rather than by acc.prepare: the same code shards on GPUs and on CPUs
        # (where Accelerate reports MULTI_CPU for an FSDP config), and the EMA follows the shards.
        self.fsdp = fsdp_lib.fsdp_settings(acc.distributed_type.name) if acc.num_processes > 1 else None
        world = acc.num_processes
        per_rank, rem = divmod(cfg.global_batch_size, world * cfg.grad_accum_steps)
        if rem or per_rank == 0:
            raise UserValueError(
                f"global_batch_size={cfg.global_batch_size} is not divisible by processes ({world}) × "
                f"grad_accum_steps ({cfg.grad_accum_steps})")
        self.micro_batch = per_rank
        check_token_width(model, interpolant)
        self.device = acc.device
        self.tf32 = telemetry.enable_tf32(self.device)
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps)
        self.cond_dropout = float(getattr(getattr(model, "config", None), "cond_dropout", 0.0))
        self.blocks = tuple(regularizer.blocks) if regularizer is not None else ()

        model = model.to(self.device)
        self.ema = EMA(model, cfg.ema_decay)
        self.regularizer = regularizer.to(self.device) if regularizer is not None else None
        trainable_reg = self.regularizer is not None and any(p.requires_grad for p in self.regularizer.parameters())
        if self.fsdp is not None:
            mesh = fsdp_lib.device_mesh(self.device)
            fsdp_lib.shard(model, mesh, self.fsdp)
            if trainable_reg:
                fsdp_lib.shard(self.regularizer, mesh, self.fsdp)
            self.ema.shard_like(model)
        # Every parameter the optimizer updates, by name: checkpoints key the optimizer state with these names.
        self.trainables = nn.ModuleDict({"model": model, **({"regularizer": self.regularizer} if trainable_reg
                                                            else {})})
        params = list(model.parameters())
        if trainable_reg:
            params += [p for p in self.regularizer.parameters() if p.requires_grad]
        fused = telemetry.fused_adamw_supported(self.device)  # one kernel for all parameters: CUDA and CPU
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas,
                                           weight_decay=cfg.weight_decay, fused=fused)
        self.raw_optimizer = self.optimizer
        warmup = max(cfg.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.raw_model = model
        if cfg.compile:
            model = torch.compile(model)
        if self.fsdp is not None:
            self.model = model
        else:
            self.model, self.optimizer = acc.prepare(model, self.optimizer)
            if trainable_reg:
                self.regularizer = acc.prepare(self.regularizer)
        self.ema_for_regularizer = self.regularizer is not None and any(
            getattr(m, "uses_ema_model", False) for m in self.regularizer.modules())
        self.stream = IndexStream(len(source), cfg.seed)
        self.prefetch = Prefetcher(self._load, cfg.total_steps)
        self.step = 0

    # ----------------------------------------------------------------------------------------------- state
    def _fingerprint(self) -> dict:
        """The resolved config minus what may change on resume."""
        return fingerprint(to_dict(self.full_config), getattr(self.full_config, "resumable_keys", ()))

    def save(self) -> Path:
        """Write a checkpoint of everything needed to continue exactly: full (unsharded) tensors, gathered by
        every process, written by the main one."""
        path = ckpt.checkpoint_path(self.run_dir, self.step)
        self.acc.wait_for_everyone()
        # The guard keeps non-finite updates out; this makes sure no checkpoint can ever hold one (collective).
        weights = [fsdp_lib.local(p) for p in self.trainables.parameters()] + self.ema.local_parameters()
        if not all_finite(weights, self._sum, self.device):
            raise NonFiniteError(f"not writing {path}: the weights hold non-finite values")
        reg = self.acc.unwrap_model(self.regularizer) if self.regularizer is not None else None
        model_state = fsdp_lib.model_state(self.raw_model)
        ema_state = self.ema.materialize().state_dict()
        reg_state = fsdp_lib.model_state(reg) if reg is not None else None
        optimizer_state = fsdp_lib.optimizer_state(self.trainables, self.raw_optimizer)
        if self.acc.is_main_process:
            ckpt.atomic_save({
                "model": model_state,
                "ema": ema_state,
                "regularizer": reg_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "samples_seen": self.step * self.cfg.global_batch_size,
                "rng": ckpt.rng_state(),
                "config": to_dict(self.full_config),
                "fingerprint": self._fingerprint(),
            }, path)
            ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint in the run directory, if any; refuse one from another config."""
        if self.acc.is_main_process:
            ckpt.remove_partial_writes(self.run_dir)  # a killed write's temp file would only take space
        found = ckpt.list_checkpoints(self.run_dir)
        if not found:
            return False
        state = ckpt.load_checkpoint(found[-1])
        diff = config_difference(state.get("fingerprint") or {}, self.full_config)
        if diff:
            raise ckpt.CheckpointError(
                f"{found[-1]} was written by a different config ({diff}); use another run_dir or the "
                "original settings")
        fsdp_lib.load_model_state(self.raw_model, state["model"])
        self.ema.load_full(state["ema"])
        if self.regularizer is not None and state["regularizer"] is not None:
            fsdp_lib.load_model_state(self.acc.unwrap_model(self.regularizer), state["regularizer"])
        fsdp_lib.load_optimizer_state(self.trainables, self.raw_optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
        return True

    # ----------------------------------------------------------------------------------------------- step
    def _load(self, step: int) -> list[MicroBatch]:
        """This process's micro-batches of `step` (its own slots of the global batch only), on the prefetch
        thread; pinned on CUDA for non-blocking copies."""
        cfg = self.cfg
        micro = load_micro_batches(self.source, self.stream, self.interpolant, self.cond_dropout, cfg.seed, step,
                                   cfg.global_batch_size, self.acc.process_index * self.micro_batch *
                                   cfg.grad_accum_steps, self.micro_batch, cfg.grad_accum_steps)
        return [m.pin() for m in micro] if self.device.type == "cuda" else micro

    def _losses(self, mb: MicroBatch, model: nn.Module | None = None):
        """Flow-matching loss plus the regularizer on one micro-batch (through `model`, by default the
        training one); returns (total, logs)."""
        b, noise, t, drop = mb.batch, mb.noise, mb.t, mb.drop
        x_t = self.interpolant.x_t(b.x, noise, t)
        model_kwargs = {"force_drop": drop if b.cond is not None else None}
        if b.token_mask is not None:
            model_kwargs["token_mask"] = b.token_mask
        out = (model or self.model)(x_t, t, b.cond, capture=self.blocks, **model_kwargs)
        pred = out.pred if self.blocks else out
        flow = self.interpolant.loss(pred, b.x, noise, t, mask=b.loss_mask).mean()
        logs = {"flow_loss": flow.detach()}
        total = flow
        if self.regularizer is not None:
            from .regularizers import AlignContext

            ctx = AlignContext(hidden=out.hidden, token_mask=b.token_mask, x=b.x, noise=noise, t=t, x_t=x_t,
                               cond=b.cond, step=self.step, interpolant=self.interpolant,
                               ema_model=self.ema.materialize() if self.ema_for_regularizer else self.ema.model,
                               raw=b.raw, model_kwargs=model_kwargs, sample_keys=mb.keys)
            reg_loss, reg_logs = self.regularizer(ctx)
            total = total + reg_loss
            logs.update({k: v.detach() for k, v in reg_logs.items()})
        logs["loss"] = total.detach()
        return total, logs

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimiser step over the global batch (all micro-batches of this process)."""
        cfg, acc = self.cfg, self.acc
        torch.manual_seed(step_seed(cfg.seed, self.step) + acc.process_index)  # model-internal draws only
        waited = self.prefetch.wait_s
        micro_batches = self.prefetch.get(self.step)
        sums: dict[str, torch.Tensor] = {"data_wait_s": torch.tensor(self.prefetch.wait_s - waited)}
        self.model.train()
        for micro, mb in enumerate(micro_batches):
            last = micro == cfg.grad_accum_steps - 1
            if self.fsdp is not None:  # reduce-scatter gradients on the last micro-batch only
                sync = contextlib.nullcontext()
                for module in self.trainables.values():
                    module.set_requires_gradient_sync(last)
            else:
                sync = acc.no_sync(self.model) if not last else contextlib.nullcontext()
            with sync:
                with acc.autocast():
                    total, logs = self._losses(mb.to(self.device))
                acc.backward(total / cfg.grad_accum_steps)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v.float() / cfg.grad_accum_steps
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        if self.fsdp is not None:
            grad_norm = fsdp_lib.full_tensor(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm))
        else:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        sums["lr"] = torch.tensor(self.scheduler.get_last_lr()[0], device=self.device)
        if self.guard.check(self.step + 1, sums["loss"], grad_norm, self._sum):  # same answer on every process
            self.optimizer.step()
            self.ema.update(self.raw_model)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums["grad_norm"] = grad_norm.detach().float() if torch.is_tensor(grad_norm) else torch.tensor(grad_norm)
        self.step += 1
        return sums

    def count_step_flops(self) -> int:
        """FLOPs of one optimiser step on this process: a throwaway forward and backward of one micro-batch of
        the next step through the uncompiled model, times the accumulation steps; its gradients are dropped.
        A real step is not counted: under the counter's dispatch mode some kernels round differently, and the
        run would no longer replay exactly on resume."""
        mb = self._load(self.step)[0].to(self.device)

        def forward_backward() -> None:
            with self.acc.autocast():
                total, _ = self._losses(mb, model=self.raw_model)
            total.backward()

        _, flops = telemetry.count_flops(forward_backward)
        self.optimizer.zero_grad(set_to_none=True)
        return flops * self.cfg.grad_accum_steps

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t, reduction="sum")

    # ------------------------------------------------------------------------------------------------ fit
    @stops_on_signals  # sets self.signals
    def fit(self) -> dict:
        """Train to `total_steps` (resuming if a checkpoint exists), sampling and evaluating on the way."""
        cfg, acc = self.cfg, self.acc
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        if acc.is_main_process:  # after resume() accepted the run: a refused config leaves the old one in place
            save_json(self.full_config, self.run_dir / "config.json")
        logger = RunLogger(self.run_dir, enabled=acc.is_main_process, total_steps=cfg.total_steps,
                           start_step=self.step)
        mode = acc.distributed_type.name if self.fsdp is None else \
            f"FSDP {'full shard' if self.fsdp.reshard_after_forward else 'shard grad/optimizer'}"
        logger.message(f"training on {acc.num_processes} process(es) ({mode}, "
                       f"{self.device.type}, {acc.mixed_precision}): micro-batch {self.micro_batch} × "
                       f"{cfg.grad_accum_steps} accumulation × {acc.num_processes} = {cfg.global_batch_size}")
        if resumed:
            logger.message(f"resumed from step {self.step} in {self.run_dir}")
        precision = "bf16" if acc.mixed_precision == "bf16" else "fp32"
        throughput = telemetry.Throughput(self.device, precision,
                                          self.count_step_flops() if self.step < cfg.total_steps else None)
        attention = telemetry.sdpa_backend(self.raw_model, self.device,
                                           torch.bfloat16 if precision == "bf16" else torch.float32)
        logger.message(f"attention: {attention}; fp32 matmuls: {'TF32' if self.tf32 else 'fp32'}; AdamW "
                       f"{'fused' if self.raw_optimizer.defaults.get('fused') else 'foreach'}; {throughput}")
        window: dict[str, torch.Tensor] = {}
        window_steps, t0 = 0, time.perf_counter()
        last_eval: dict = {}
        stop = 0  # the signal that asked to stop (SIGINT, SIGTERM), agreed by all processes
        while self.step < cfg.total_steps:
            skipped = self.guard.skipped
            logs = self.train_step()
            if self.guard.skipped > skipped:
                logger.message(f"step {self.step}: non-finite loss or gradient norm, update skipped "
                               f"({self.guard.consecutive} in a row, limit {self.guard.max_consecutive})")
            for k, v in logs.items():
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            stop = self.signals.requested(acc)
            if self.step % cfg.log_every == 0 or self.step == cfg.total_steps or self.guard.exhausted or stop:
                # Logged values: one host synchronisation per logging interval (the guard reads one flag a step).
                keys = sorted(window)
                values = acc.reduce(torch.stack([window[k].float().to(self.device) for k in keys]),
                                    reduction="mean").tolist()
                elapsed = time.perf_counter() - t0
                row = {k: v / window_steps for k, v in zip(keys, values)}
                row["samples_per_s"] = window_steps * cfg.global_batch_size / max(elapsed, 1e-9)
                row["data_wait_frac"] = row["data_wait_s"] * window_steps / max(elapsed, 1e-9)
                row["peak_mem_gb"] = peak_memory_gb(self.device)
                row.update(throughput.row(window_steps, elapsed))
                row["skipped_steps"] = self.guard.skipped
                logger.log(self.step, row)
                window, window_steps, t0 = {}, 0, time.perf_counter()
            if self.guard.exhausted:
                self._stop_nonfinite(logger)
            if stop:
                break
            # A checkpoint that falls due inside a streak of skipped steps is not written: its weights are the
            # ones that diverge, and resuming from it would only repeat the streak.
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.total_steps and \
                    not self.guard.consecutive:
                self.save()
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.total_steps:
                self._sample()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.total_steps:
                last_eval = self._evaluate(logger)
        if (not ckpt.list_checkpoints(self.run_dir) or ckpt.list_checkpoints(self.run_dir)[-1] !=
                ckpt.checkpoint_path(self.run_dir, self.step)) and not (stop and self.guard.consecutive):
            self.save()  # (not when stopped inside a streak of skipped steps: those weights diverge)
        self.prefetch.close()
        self.signals.restore()  # final samples and evaluation stop the ordinary way
        if stop:
            found = ckpt.list_checkpoints(self.run_dir)
            stopped = TrainingStopped(stop, self.step, found[-1] if found else None)
            logger.message(str(stopped))
            logger.close()
            raise stopped
        self._sample()
        last_eval = self._evaluate(logger) or last_eval
        logger.close()
        return last_eval

    def _stop_nonfinite(self, logger: RunLogger) -> None:
        # The streak's steps all saw the weights left by the step before it: those diverge, so a checkpoint of
        # them (finite, but the cause) is not good either.
        good = [p for p in ckpt.list_checkpoints(self.run_dir)
                if int(ckpt.CKPT_PATTERN.match(p.name).group(1)) < self.guard.streak_start - 1]
        logger.close()
        raise NonFiniteError(
            f"stopped at step {self.step}: {self.guard.consecutive} consecutive steps with a non-finite loss or "
            f"gradient norm (train.max_nonfinite_steps={self.guard.max_consecutive}); last good checkpoint: "
            f"{good[-1] if good else 'none'}")

    def _sample(self) -> None:
        if self.sample_fn is not None:
            ema = self.ema.materialize()  # a collective under FSDP
            if self.acc.is_main_process:
                self.sample_fn(ema, self.step, self.run_dir)
        self.acc.wait_for_everyone()

    def _evaluate(self, logger: RunLogger) -> dict:
        result: dict = {}
        if self.eval_fn is not None:
            ema = self.ema.materialize()
            if self.acc.is_main_process:
                result = self.eval_fn(ema, self.step)
                logger.log_eval(self.step, result)
        self.acc.wait_for_everyone()
        return result


def check_token_width(model: nn.Module, interpolant) -> None:
    """Refuse a DiT whose tokens carry more values (channels × patch volume) than its width when it predicts
    velocity, noise or score: the output Linear(width → values) has rank < values, so noise directions outside its
    range are never removed and samples stay noisy. An x₀ prediction only loses detail, and is allowed."""
    config = getattr(model, "config", None)
    if not all(hasattr(config, k) for k in ("in_channels", "patch_size", "hidden_size")):
        return
    values = config.in_channels * math.prod(config.patch_size)
    if values > config.hidden_size and getattr(interpolant, "prediction", "x0") != "x0":
        raise UserValueError(f"each token carries {values} values ({config.in_channels} channels × patch "
                             f"{'×'.join(map(str, config.patch_size))}) but the width is "
                             f"{config.hidden_size}, too "
                             f"narrow for {interpolant.prediction} prediction; use a smaller patch, a wider "
                             "model or --path.prediction=x0")


def fingerprint(config: dict, resumable_keys=()) -> dict:
    """`config` without RESUMABLE_CHANGES (at any depth) and the recipe's own `resumable_keys` (top level)."""
    def strip(d: dict, top: bool) -> dict:
        return {k: strip(v, False) if isinstance(v, dict) else v for k, v in d.items()
                if k not in RESUMABLE_CHANGES and not (top and k in resumable_keys)}
    return strip(config, True)


def config_difference(stored: dict, config: Any) -> str:
    """The first difference between a checkpoint's stored fingerprint and `config` ("" when none), each
    stripped of what may change on resume. A key the checkpoint lacks counts as its field's default: a
    field added after the run was written kept the behaviour of its default then, so that run resumes
    unless the new field is set to something else."""
    resumable = getattr(config, "resumable_keys", ())
    try:
        defaults = to_dict(type(config)())
    except TypeError:  # a config without defaults for every field: nothing to fill
        defaults = {}
    return _first_difference(fingerprint(_with_defaults(stored, defaults), resumable),
                             fingerprint(to_dict(config), resumable))


def _with_defaults(stored: dict, defaults: dict) -> dict:
    out = dict(stored)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: checkpoint {va!r}, now {vb!r}"
    return ""
