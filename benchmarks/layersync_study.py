"""Vanilla against LayerSync (and SRA, dispersive, the automatic pair) over several seeds on the digits
recipe: the metric against step with 95% intervals, linear-probe accuracy per block, and LayerSync's speed-up.

    python benchmarks/layersync_study.py --out study_out                        # digits default, 3 seeds
    python benchmarks/layersync_study.py --out study_small --steps 600 --eval-every 150 --eval-per-class 20 \
        --set model.depth=6 --set model.hidden_size=64 --set train.global_batch_size=32 --jobs 2

Each (method, seed) is one `recipes/image_sit.py` run in OUT/<method>_seed<S> (rerunning resumes, finished
runs are kept), evaluated every --eval-every steps (fd_digits on EMA samples), then `layersync image analyze`
on its final EMA weights (probes only). Writes OUT/study.json, OUT/study.md (the tables) and OUT/study.png.

Statistics: mean over seeds ± the 95% Student-t half-width t₀.₉₇₅(n−1)·s/√n. Speed-up of a method: the steps
vanilla needs to reach its own final mean metric divided by the steps the method's mean curve needs (linear
interpolation of log-metric between evaluations); its interval is the 2.5–97.5 percentile over a bootstrap
of seeds (each method's seeds resampled with replacement), with the share of resamples that reach the target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from layersync.core.checkpoint import checkpoint_path

ROOT = Path(__file__).resolve().parents[1]
# Overrides of the digits preset per method; the default preset is LayerSync 3←6, λ 0.2 (8 blocks).
METHODS = {
    "vanilla": ["--align.layersync="],
    "layersync": [],
    "auto": ["--align.layersync=auto"],
    "sra": ["--align.layersync=", "--align.sra=3:6"],
    "dispersive": ["--align.layersync=", "--align.dispersive_block=3"],
}


def recipe_command(run: Path, method: str, seed: int, args) -> list[str]:
    """The digits recipe for one (method, seed). The method's own flags come last, so they win over a
    common `--set`: `--set align.layersync=4:8` moves LayerSync's pair and leaves vanilla, SRA and
    dispersive without LayerSync."""
    return [sys.executable, str(ROOT / "recipes" / "image_sit.py"), f"--run_dir={run}", f"--train.seed={seed}",
            f"--train.total_steps={args.steps}", f"--train.eval_every={args.eval_every}",
            f"--train.ckpt_every={args.eval_every}", "--train.sample_every=0", "--train.log_every=50",
            f"--eval_per_class={args.eval_per_class}", f"--sample.steps={args.sample_steps}",
            *(f"--{kv}" for kv in args.set), *METHODS[method]]


def analysed_at(run: Path, step: int) -> bool:
    """Whether `run`'s analysis.json is of its step-`step` checkpoint (one written before analyses named their
    step, or of a shorter study, is not)."""
    path = run / "analysis.json"
    return path.exists() and json.loads(path.read_text()).get("step") == step


def run_one(out: Path, method: str, seed: int, args) -> Path:
    """Train and analyse one (method, seed); skipped when its final evaluation and the analysis of its step
    --steps exist, so a rerun with more --steps resumes training and analyses the new weights."""
    run = out / f"{method}_seed{seed}"
    evals = run / "evals.jsonl"
    done = evals.exists() and any(json.loads(line)["step"] == args.steps
                                  for line in evals.read_text().splitlines())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    if not done:
        cmd = recipe_command(run, method, seed, args)
        t0 = time.time()
        with open(out / f"{run.name}.log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{run.name}: trained in {time.time() - t0:.0f} s", flush=True)
    if not analysed_at(run, args.steps):
        cmd = [sys.executable, "-m", "layersync.cli", "image", "analyze", "--run", str(run), "--no-pruning",
               "--ckpt", str(checkpoint_path(run, args.steps)), "--t", *map(str, args.probe_t)]
        with open(out / f"{run.name}.log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    return run


def ci95(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the Student-t 95% half-width over `axis`."""
    from scipy import stats

    n = values.shape[axis]
    if n < 2:
        return values.mean(axis=axis), 0 * values.mean(axis=axis)
    half = stats.t.ppf(0.975, n - 1) * values.std(axis=axis, ddof=1) / np.sqrt(n)
    return values.mean(axis=axis), half


def steps_to_reach(steps: np.ndarray, curve: np.ndarray, target: float) -> float:
    """First step at which `curve` (lower is better) reaches `target`, log-linearly interpolated; nan if
    never."""
    below = np.flatnonzero(curve <= target)
    if len(below) == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(steps[0])
    a, b = np.log(curve[i - 1]), np.log(curve[i])
    return float(steps[i - 1] + (steps[i] - steps[i - 1]) * (a - np.log(target)) / (a - b))


def speedup(steps, vanilla: np.ndarray, other: np.ndarray, rng: np.random.Generator, draws: int = 2000):
    """(point, lo, hi, share reached): vanilla's steps to its final mean over the method's, bootstrapped."""
    def once(v, o):
        target = v.mean(0)[-1]
        return steps_to_reach(steps, v.mean(0), target) / steps_to_reach(steps, o.mean(0), target)

    point = once(vanilla, other)
    boots = np.array([once(vanilla[rng.integers(0, len(vanilla), len(vanilla))],
                           other[rng.integers(0, len(other), len(other))]) for _ in range(draws)])
    reached = np.isfinite(boots)
    lo, hi = np.percentile(boots[reached], [2.5, 97.5]) if reached.any() else (np.nan, np.nan)
    return float(point), float(lo), float(hi), float(reached.mean())


def summarise(out: Path, methods: list[str], seeds: list[int], args) -> dict:
    curves, probes, steps, blocks = {}, {}, None, None
    for m in methods:
        rows, accs = [], []
        for s in seeds:
            run = out / f"{m}_seed{s}"
            evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
            by_step = {e["step"]: e[args.metric] for e in evals}  # a resumed run may repeat a step
            steps = np.array(sorted(by_step))
            rows.append([by_step[k] for k in steps])
            analysis = json.loads((run / "analysis.json").read_text())
            accs.append(analysis["probe_accuracy"])  # (T, L)
            blocks = analysis["blocks"]
        curves[m], probes[m] = np.array(rows), np.array(accs)  # (S, E), (S, T, L)
    rng = np.random.default_rng(0)
    result = {"metric": args.metric, "steps": steps.tolist(), "seeds": seeds, "blocks": blocks,
              "probe_t": args.probe_t, "overrides": args.set, "methods": {}}
    for m in methods:
        mean, half = ci95(curves[m])
        pmean, phalf = ci95(probes[m])
        entry = {"metric_mean": mean.tolist(), "metric_ci95": half.tolist(),
                 "metric_per_seed": curves[m].tolist(),
                 "probe_mean": pmean.tolist(), "probe_ci95": phalf.tolist(),
                 "probe_block_mean": ci95(probes[m].mean(2))[0].tolist(),
                 "probe_block_mean_ci95": ci95(probes[m].mean(2))[1].tolist()}
        if "vanilla" in curves and m != "vanilla":
            entry["speedup"] = dict(zip(("point", "lo", "hi", "share_reached"),
                                        speedup(steps, curves["vanilla"], curves[m], rng)))
        result["methods"][m] = entry
    return result


def cell(mean: float, half: float, fmt: str, half_fmt: str, one_seed: bool) -> str:
    """`mean ± half`, or the mean alone for one seed (whose half-width is no measurement, not zero)."""
    return format(mean, fmt) if one_seed else f"{mean:{fmt}} ± {half:{half_fmt}}"


def markdown(result: dict) -> str:
    steps, metric = result["steps"], result["metric"]
    one = len(result["seeds"]) < 2  # one seed: no interval to show
    spread = "one seed, no interval" if one else "mean ± 95% half-width"
    lines = [f"{metric} ({spread}; seeds {result['seeds']}); overrides: "
             f"{' '.join(result['overrides']) or 'none'}", "",
             "| method | " + " | ".join(f"step {s}" for s in steps) +
             " | speed-up vs vanilla (95% bootstrap) |",
             "|---" * (len(steps) + 2) + "|"]
    for m, e in result["methods"].items():
        cells = [cell(a, b, ".3g", ".2g", one) for a, b in zip(e["metric_mean"], e["metric_ci95"])]
        sp = e.get("speedup")
        if sp is None:
            tail = "1 (reference)"
        elif not np.isfinite(sp["point"]):
            tail = (f"does not reach vanilla's final {metric} (reached in {sp['share_reached']:.0%} of "
                    "resamples)")
        else:
            tail = (f"×{sp['point']:.2f} [{sp['lo']:.2f}, {sp['hi']:.2f}], reached in "
                    f"{sp['share_reached']:.0%}")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {tail} |")
    lines += ["", f"Linear-probe accuracy (digit class, final EMA weights, null label) by block, {spread}:", ""]
    blocks = result["blocks"]
    lines += ["| method | t | " + " | ".join(f"block {b}" for b in blocks) + " | mean |",
              "|---" * (len(blocks) + 3) + "|"]
    for m, e in result["methods"].items():
        for i, t in enumerate(result["probe_t"]):
            cells = [cell(a, b, ".3f", ".3f", one) for a, b in zip(e["probe_mean"][i], e["probe_ci95"][i])]
            lines.append(f"| {m} | {t:g} | " + " | ".join(cells) +
                         f" | {np.mean(e['probe_mean'][i]):.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = np.array(result["steps"])
    for c, (m, e) in enumerate(result["methods"].items()):
        mean, half = np.array(e["metric_mean"]), np.array(e["metric_ci95"])
        ax.plot(steps, mean, marker="o", color=f"C{c}", label=m)
        ax.fill_between(steps, np.maximum(mean - half, 1e-3), mean + half, color=f"C{c}", alpha=0.2)
        for i, t in enumerate(result["probe_t"]):
            pm, ph = np.array(e["probe_mean"][i]), np.array(e["probe_ci95"][i])
            bx.errorbar(result["blocks"], pm, yerr=ph, marker="o", capsize=3, color=f"C{c}",
                        linestyle=("-", "--", ":", "-.")[i % 4], label=f"{m}, t = {t:g}")
    ax.set(xlabel="training step", ylabel=result["metric"], yscale="log",
           title=f"{result['metric']}, " + (f"seed {result['seeds'][0]}" if len(result["seeds"]) < 2 else
                                             f"mean ± 95% over {len(result['seeds'])} seeds"))
    bx.set(xlabel="block", ylabel="linear-probe accuracy", title="probe accuracy by block (final EMA)")
    ax.legend()
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="study folder (outside the repository is best)")
    p.add_argument("--methods", nargs="+", default=["vanilla", "layersync", "sra", "dispersive"],
                   choices=sorted(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-per-class", type=int, default=100, help="EMA samples per class per evaluation")
    p.add_argument("--sample-steps", type=int, default=20, help="Heun steps of the evaluation samples")
    p.add_argument("--probe-t", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--metric", default="fd_digits")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every run, e.g. --set model.depth=12 (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    args = p.parse_args()
    if args.steps % args.eval_every:
        raise SystemExit(f"--steps={args.steps} must be a multiple of --eval-every={args.eval_every}")
    if "vanilla" not in args.methods:
        raise SystemExit("the study compares against vanilla: keep it in --methods")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda ms: run_one(out, ms[0], ms[1], args), jobs))
    result = summarise(out, args.methods, args.seeds, args)
    result["wall_s"] = time.time() - t0
    (out / "study.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (out / "study.md").write_text(table)
    plot(result, out / "study.png")
    print(table)
    print(f"{len(jobs)} runs in {result['wall_s']:.0f} s → {out}/study.json, study.md, study.png")


if __name__ == "__main__":
    main()
