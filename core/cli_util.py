"""Command-line plumbing shared by recipes and `layersync`: presets, overrides, --dry-run, one-line errors.

A `UserError` (core/errors.py: a bad setting, a missing or malformed file, a count too small) is printed as
one line and exits 2; every other exception is a bug and keeps its traceback. `--debug` anywhere on the
command line, or `LAYERSYNC_DEBUG=1`, shows the traceback of a UserError too."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, apply_overrides, describe, parse_cli_overrides, to_dict
from .errors import UserError

DEBUG_ENV = "LAYERSYNC_DEBUG"


def resolve_config(cls: type, presets: dict[str, dict[str, Any]], default_preset: str,
                   argv: list[str], prog: str) -> tuple[Any, bool]:
    """Parse `[--preset NAME] [--dry-run] [--key=value …]` into (config, dry_run); --help prints and exits."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {prog} [--preset NAME] [--dry-run] [--key=value ...]\n\n"
              f"presets: {', '.join(presets)} (default {default_preset})\n\nkeys (defaults before presets):\n"
              f"{describe(cls)}")
        raise SystemExit(0)
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    overrides = parse_cli_overrides(argv)
    preset = overrides.pop("preset", default_preset)
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    cfg = apply_overrides(cls(), presets[preset])
    cfg = apply_overrides(cfg, overrides)
    return cfg, dry_run


def print_config(cfg: Any) -> None:
    print(json.dumps(to_dict(cfg), indent=2, sort_keys=True))


def run_main(fn: Callable[[], Any], prog: str, debug: bool = False) -> None:
    """Call `fn`; a UserError prints `prog: error: …` on one line and exits 2 (with its traceback under
    `debug`, `--debug` in sys.argv, which is taken out, or LAYERSYNC_DEBUG=1); anything else propagates."""
    debug = debug or "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    sys.argv[1:] = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        fn()
    except UserError as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # a full disk outside core/atomic.py's writes (logs, samples): not a bug either
        if e.errno != errno.ENOSPC or debug:
            raise
        print(f"{prog}: error: no space left on device writing {e.filename or 'a file'}; free space and "
              "rerun the same command to continue", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


FLOW_SAMPLERS = ("euler", "heun", "heun2", "dopri5", "sde")  # core.sampling's, for the SiT domains


def add_run_arguments(parser: argparse.ArgumentParser,
                      run_help: str = "run directory (its newest checkpoint is used)") -> None:
    """--run (required) and --ckpt: which run, and which of its checkpoints."""
    parser.add_argument("--run", required=True, help=run_help)
    parser.add_argument("--ckpt", help="a specific checkpoint file instead of the newest")


def add_sampler_arguments(parser: argparse.ArgumentParser, samplers: tuple[str, ...] = FLOW_SAMPLERS,
                          steps_help: str = "override the number of ODE steps", cfg_scale: bool = False) -> None:
    """--sampler and --steps overriding the run's (None when not given), then --cfg-scale if `cfg_scale`."""
    parser.add_argument("--sampler", choices=samplers, help="override the run's sampler")
    parser.add_argument("--steps", type=int, help=steps_help)
    if cfg_scale:
        parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (1 = off)")


def add_sample_arguments(parser: argparse.ArgumentParser, num: tuple[int, str] | None = None,
                         default_out: str = "RUN/samples_cli", cfg_scale: bool = False) -> None:
    """A `sample` command's --run, --ckpt, --num (when `num` = (default, help) is given), --out, --sampler,
    --steps and, if `cfg_scale`, --cfg-scale, in that order."""
    add_run_arguments(parser)
    if num is not None:
        parser.add_argument("--num", type=int, default=num[0], help=num[1])
    parser.add_argument("--out", help=f"output folder (default {default_out})")
    add_sampler_arguments(parser, cfg_scale=cfg_scale)


def replace_given(spec: Any, **values: Any) -> Any:
    """`dataclasses.replace(spec, …)` with the values that are not None (the options a user gave)."""
    return dataclasses.replace(spec, **{k: v for k, v in values.items() if v is not None})


def write_result(result: dict[str, Any], target: str | Path) -> None:
    """Write an evaluate result as JSON to `target`; print its scalar entries as aligned lines, then the path."""
    target = Path(target)
    target.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for k, v in result.items():
        if not isinstance(v, (list, dict)):
            print(f"{k:<{width}}  {v:.5g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(f"→ {target}")
