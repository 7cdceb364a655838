"""`analysis.json` and its pictures for `layersync <domain> analyze`: CKA heatmaps, probe curves, pruning,
one run or two side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from layersync.core.errors import UserValueError


def summary_lines(name: str, analysis: dict) -> list[str]:
    """Printable lines: probe accuracy per block at each t, its mean, and the pruning losses."""
    at = f" at step {analysis['step']}" if analysis.get("step") is not None else ""
    lines = [f"{name}{at}: linear-probe accuracy ({analysis['task']}, {analysis['n_examples']} examples)",
             f"  {'block':<9}{''.join(f'{b:>7}' for b in analysis['blocks'])}   mean"]
    for t, accs in zip(analysis["t"], analysis["probe_accuracy"]):
        lines.append(f"  t = {t:<5g}{''.join(f'{a:7.3f}' for a in accs)}  {np.mean(accs):5.3f}")
    if "pruning" in analysis:
        p = analysis["pruning"]
        lines.append(f"  flow loss {p['full']:.4f}; with block k skipped: "
                     f"{' '.join(f'{v:.4f}' for v in p['skip'])}")
    return lines


def write_report(run_dir: str | Path, analysis: dict, against: tuple[str, dict] | None = None) -> list[Path]:
    """Write `analysis.json` (with the other run's analysis under "against") and the PNGs into `run_dir`."""
    run_dir = Path(run_dir)
    record = dict(analysis)
    if against is not None:
        record["against"] = {"run": against[0], **against[1]}
    path = run_dir / "analysis.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    runs = [(run_dir.name, analysis)] + ([(Path(against[0]).name, against[1])] if against else [])
    return [path, _plot_matrices(runs, "cka", run_dir / "analysis_cka.png"),
            _plot_matrices(runs, "cosine", run_dir / "analysis_cosine.png"),
            _plot_curves(runs, run_dir / "analysis_probes.png")]


def _plot_matrices(runs: list[tuple[str, dict]], key: str, path: Path) -> Path:
    """One heatmap per (run, t): rows are runs, columns are t values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = runs[0][1]["t"]
    fig, axes = plt.subplots(len(runs), len(ts), figsize=(3.2 * len(ts), 3.0 * len(runs)), squeeze=False)
    label = "linear CKA" if key == "cka" else "mean token cosine"
    for r, (name, analysis) in enumerate(runs):
        blocks = analysis["blocks"]
        for c, t in enumerate(analysis["t"]):
            ax = axes[r, c]
            im = ax.imshow(np.asarray(analysis[key][c]), vmin=0 if key == "cka" else -1, vmax=1,
                           cmap="viridis", extent=(0.5, len(blocks) + 0.5, len(blocks) + 0.5, 0.5))
            ax.set_title(f"{name}, t = {t:g}", fontsize=9)
            ax.set_xlabel("block")
            ax.set_ylabel("block")
    fig.colorbar(im, ax=axes, shrink=0.8, label=label)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_curves(runs: list[tuple[str, dict]], path: Path) -> Path:
    """Probe accuracy against block (a line per run and t) and, when present, the pruned flow loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pruning = all("pruning" in a for _, a in runs)
    fig, axes = plt.subplots(1, 2 if pruning else 1, figsize=(11 if pruning else 6, 4), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for r, (name, analysis) in enumerate(runs):
        for c, (t, accs) in enumerate(zip(analysis["t"], analysis["probe_accuracy"])):
            axes[0, 0].plot(analysis["blocks"], accs, styles[r % 4], marker="o", color=f"C{c}",
                            label=f"{name}, t = {t:g}")
        if pruning:
            p = analysis["pruning"]
            axes[0, 1].plot(analysis["blocks"], np.asarray(p["skip"]) / p["full"], styles[r % 4], marker="o",
                            color="k", label=name)
    axes[0, 0].set(xlabel="block", ylabel=f"linear-probe accuracy ({runs[0][1]['task']})",
                   title="probe accuracy by block")
    axes[0, 0].legend(fontsize=7)
    if pruning:
        axes[0, 1].set(xlabel="block skipped", ylabel="flow loss / unpruned", yscale="log",
                       title="block pruning")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_analyze_arguments(parser) -> None:
    """The `analyze` command's options, the same in every domain."""
    parser.add_argument("--run", required=True, help="run directory (its newest checkpoint's EMA weights)")
    parser.add_argument("--ckpt", help="a specific checkpoint file instead of the newest")
    parser.add_argument("--against", help="a second run directory, analysed alike and drawn beside the first")
    parser.add_argument("--t", type=float, nargs="+", default=None, metavar="T",
                        help="noise levels to probe at (t = 0 is data; default 0.25 0.5 0.75)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and the probes' split")
    parser.add_argument("--no-pruning", dest="pruning", action="store_false",
                        help="skip block pruning (one flow-loss pass per block)")


def analyze_command(args, load) -> dict:
    """Analyse `args.run` (and `args.against`); `load(run, ckpt) -> (model, interpolant, ProbeSet,
    checkpoint path)` is the domain's part. Prints a summary, writes `analysis.json` (naming the checkpoint
    and its step) and the PNGs into the run directory."""
    from layersync.core.checkpoint import CKPT_PATTERN

    from .representation import DEFAULT_T, analyze_blocks

    ts = tuple(args.t) if args.t else DEFAULT_T
    if not all(0.0 <= t <= 1.0 for t in ts):
        raise UserValueError(f"--t values must lie in [0, 1] (t = 0 is data), got {list(ts)}")

    def analyse(run: str, ckpt: str | None) -> dict:
        model, interpolant, probes, ckpt_path = load(run, ckpt)
        found = CKPT_PATTERN.match(Path(ckpt_path).name)  # a training checkpoint's step; None for others
        return {"checkpoint": str(ckpt_path), "step": int(found.group(1)) if found else None,
                **analyze_blocks(model, interpolant, probes, ts=ts, seed=args.seed, pruning=args.pruning)}

    analysis = analyse(args.run, args.ckpt)
    against = None
    if args.against:
        other = analyse(args.against, None)
        if other["blocks"] != analysis["blocks"] or other["task"] != analysis["task"]:
            raise UserValueError(f"--against {args.against} has {len(other['blocks'])} blocks probed for "
                                 f"{other['task']!r}, {args.run} {len(analysis['blocks'])} for "
                                 f"{analysis['task']!r}: compare runs of the same depth and domain")
        against = (args.against, other)
    for name, a in [(args.run, analysis)] + ([against] if against else []):
        print("\n".join(summary_lines(name, a)))
    paths = write_report(args.run, analysis, against)
    print(f"→ {', '.join(str(p) for p in paths)}")
    return analysis
