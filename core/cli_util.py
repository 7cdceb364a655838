"""Command-line plumbing shared by recipes and `layersync`: presets, overrides, --dry-run, one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

from .checkpoint import CheckpointError
from .config import ConfigError, apply_overrides, describe, parse_cli_overrides, to_dict
from .weights import MissingWeightsError

# Errors a user can fix from the message alone: printed as one line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, MissingWeightsError, FileNotFoundError, ValueError, KeyError,
               NotImplementedError)


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


def run_main(fn: Callable[[], Any], prog: str) -> None:
    """Call `fn`; a user error prints `prog: error: …` on one line and exits 2."""
    try:
        fn()
    except USER_ERRORS as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
