"""What each regularizer costs per training step: wall time and FLOPs against the vanilla flow loss.

    python benchmarks/regularizer_overhead.py                         # S/2, 32×32×4 latents, batch 8, CPU
    python benchmarks/regularizer_overhead.py --preset XL/2 --batch 64 --device cuda --bf16

One process, one model per variant (same init). A step is `Trainer.train_step` of core/trainer.py itself:
forward (capturing the blocks the regularizer needs), flow loss + regularizer, backward, clipping, AdamW step,
EMA update. The variants run
interleaved round-robin, step by step, so drifting clocks and a busy machine hit them alike; FLOPs are
counted once per variant with torch.utils.flop_counter (matmuls, convolutions, attention; forward and
backward). Blocks are the paper's SiT-XL/2 settings (depth 28) scaled to the model's depth: LayerSync
8:16, SRA 8→20, REPA 8. REPA's targets are random (B, N, 768) tokens: the frozen encoder is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from layersync.core.interpolants import Interpolant
from layersync.core.models import PRESETS, DiT, DiTConfig
from layersync.core.regularizers import REPA, SRA, AlignContext, LayerSync, Regularizer

XL_DEPTH = 28
REPA_ENCODER_DIM = 768  # DINOv2-B


def scaled(block: int, depth: int) -> int:
    """A block of SiT-XL/2 (depth 28) at the same relative depth in a `depth`-block model."""
    return max(1, round(block * depth / XL_DEPTH))


def build_variants(model: DiT) -> dict[str, Regularizer | None]:
    """vanilla, LayerSync, SRA and REPA at the paper's (scaled) blocks and weights."""
    depth, width = model.config.depth, model.config.hidden_size
    return {
        "vanilla": None,
        "layersync": LayerSync([(scaled(8, depth), scaled(16, depth))], weight=0.2, depth=depth),
        "sra": SRA(scaled(8, depth), scaled(20, depth), hidden_size=width, weight=0.2, depth=depth),
        "repa": REPA(scaled(8, depth), hidden_size=width, encoder_dim=REPA_ENCODER_DIM, weight=0.5,
                     depth=depth),
    }


def describe(reg: Regularizer | None) -> str:
    """The blocks a variant aligns, as its flag would spell them."""
    if isinstance(reg, LayerSync):
        return ",".join(f"{s}:{t}" for s, t in reg.pairs)
    if isinstance(reg, SRA):
        return f"{reg.student_block}→{reg.teacher_block}"
    return "-" if reg is None else ",".join(map(str, reg.blocks))


def make_trainer(config: DiTConfig, reg: Regularizer | None, batch: int, device: torch.device, bf16: bool,
                 compile: bool = False):
    """A core/trainer.py Trainer for this variant, with its own model copy (same init for every variant)."""
    from accelerate import Accelerator

    from layersync.core.trainer import TensorSource, TrainConfig, Trainer

    torch.manual_seed(0)
    model = DiT(config)
    g = torch.Generator().manual_seed(1)
    n = 4 * batch
    x = torch.randn(n, config.in_channels, *config.input_size, generator=g)
    y = torch.randint(0, config.num_classes, (n,), generator=g)
    raw = torch.randn(n, model.num_tokens, REPA_ENCODER_DIM, generator=g)  # REPA's (random) encoder targets
    cfg = TrainConfig(global_batch_size=batch, total_steps=10**9, log_every=10**9,  # SiT: AdamW 1e-4, EMA
                      compile=compile)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=device.type == "cpu")
    return Trainer(cfg, model, Interpolant(), TensorSource(x, y, raw=raw), run_dir="/dev/null",
                   full_config=cfg, regularizer=reg, accelerator=accelerator)


def make_step(config: DiTConfig, reg: Regularizer | None, batch: int, device: torch.device,
              bf16: bool) -> Callable[[], None]:
    """The trainer's own training step (core/trainer.py) for this variant, with its own model copy."""
    return make_trainer(config, reg, batch, device, bf16).train_step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="S/2", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256² images via SD-VAE)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as the trainer on GPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    config = DiTConfig.from_preset(args.preset, input_size=(args.latent, args.latent), in_channels=4)
    model = DiT(config)
    variants = build_variants(model)
    del model
    steps = {name: make_step(config, reg, args.batch, device, args.bf16) for name, reg in variants.items()}

    flops = {}
    for name, step in steps.items():  # counted once per variant; also the first warm-up step
        with FlopCounterMode(display=False) as counter:
            step()
        flops[name] = counter.get_total_flops()
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):  # round-robin: every variant once per round
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)

    print(f"{args.preset}, depth {config.depth}, width {config.hidden_size}, {config.num_tokens} tokens, "
          f"batch {args.batch}, {args.device}{' bf16' if args.bf16 else ' fp32'}, {args.steps} timed steps "
          f"per variant ({torch.get_num_threads()} threads)")
    print(f"{'variant':<22} {'blocks':>9} {'median ms':>10} {'× vanilla':>10} {'GFLOP/step':>11} "
          f"{'× FLOPs':>8}")
    base_ms = statistics.median(times["vanilla"]) * 1e3
    for name, reg in variants.items():
        ms = statistics.median(times[name]) * 1e3
        label = name if reg is None else f"{name} (λ {reg.weight:g})"
        print(f"{label:<22} {describe(reg):>9} {ms:>10.1f} {ms / base_ms:>10.3f} {flops[name] / 1e9:>11.1f} "
              f"{flops[name] / flops['vanilla']:>8.3f}")


if __name__ == "__main__":
    main()
