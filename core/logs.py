"""Run logs: a progress bar with the loss terms, a JSONL file, TensorBoard events and a plot of the curves."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("layersync")

# What the progress bar shows, in order: (log key prefix, short label).
_BAR_KEYS = (("loss", "loss"), ("flow_loss", "flow"), ("layersync/loss", "ls"), ("layersync/cos", "cos"),
             ("sra/loss", "sra"), ("repa/loss", "repa"), ("dispersive/loss", "disp"), ("lr", "lr"),
             ("grad_norm", "gnorm"), ("samples_per_s", "img/s"), ("data_wait_frac", "wait"), ("tflops", "TFLOP/s"),
             ("mfu", "MFU"), ("peak_mem_gb", "memGB"), ("skipped_steps", "skipped"))


class RunLogger:
    """Writes `log.jsonl`, `evals.jsonl` and TensorBoard events; shows a tqdm bar (main process only)."""

    def __init__(self, run_dir: str | Path, enabled: bool, total_steps: int, start_step: int = 0):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.bar = self.tb = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step or None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                        mininterval=1.0)
        self._last_step = start_step
        self._jsonl = open(self.run_dir / "log.jsonl", "a")

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def log(self, step: int, row: dict[str, float]) -> None:
        """One logging interval: JSONL row, TensorBoard scalars, bar postfix."""
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **row}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in row.items():
            self.tb.add_scalar(f"train/{k}", v, step)
        postfix = {}
        for prefix, label in _BAR_KEYS:
            key = next((k for k in row if k == prefix or k.startswith(prefix + "_")), None)
            if key is not None:
                v = row[key]
                postfix[label] = f"{v:.2e}" if label == "lr" else f"{v:.4g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(step - self._last_step)
        self._last_step = step

    def log_eval(self, step: int, result: dict) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "evals.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")
        for k, v in result.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"eval/{k}", v, step)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool))
        self.message(f"eval @ step {step}: {summary}")

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.tb.close()
        self._jsonl.close()
        plot_curves(self.run_dir / "log.jsonl", self.run_dir / "curves.png")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(jsonl: str | Path, png: str | Path) -> Path | None:
    """Loss terms (left) and alignment cosines (right) over steps, from the JSONL log."""
    rows = read_jsonl(jsonl)
    if not rows:
        log.warning("no log rows in %s: no curves plotted", jsonl)
        return None
    # A resumed run appends rows; keep the last row written for each step.
    by_step = {r["step"]: r for r in rows}
    steps = sorted(by_step)
    rows = [by_step[s] for s in steps]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r})
    loss_keys = [k for k in keys if k in ("loss", "flow_loss") or k.endswith("/loss")]
    cos_keys = [k for k in keys if "/cos" in k]
    fig, axes = plt.subplots(1, 2 if cos_keys else 1, figsize=(11 if cos_keys else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for k in loss_keys:
        ax.plot(steps, [r.get(k, float("nan")) for r in rows], label=k)
    ax.set_xlabel("step"), ax.set_title("loss terms"), ax.legend(), ax.grid(alpha=0.3)
    if cos_keys:
        ax = axes[0, 1]
        for k in cos_keys:
            ax.plot(steps, [r.get(k, float("nan")) for r in rows], label=k)
        ax.set_xlabel("step"), ax.set_title("alignment cosine (student vs detached teacher)")
        ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)
