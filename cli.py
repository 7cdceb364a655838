"""The `layersync` command: one entry point, a sub-command per domain (`layersync image sample|evaluate`)."""

from __future__ import annotations

import argparse
import logging
import sys


# domain -> (module with `add_commands(parser)`, help line). A new modality adds one line here.
DOMAINS = {
    "image": ("layersync.image.cli", "class-conditional images (digits, ImageNet latents)"),
    "audio": ("layersync.audio.cli", "log-mel audio (embedded synthetic music, MTG-Jamendo), vocoders, FAD"),
    "motion": ("layersync.motion.cli", "text-to-motion (embedded synthetic motions, HumanML3D), T2M protocol"),
    "video": ("layersync.video.cli", "unconditional video (embedded bouncing balls, CLEVRER), MP4s, FVD"),
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="layersync", description="Align a diffusion/flow transformer's own layers: sample and evaluate.",
        epilog="--debug anywhere (or LAYERSYNC_DEBUG=1) shows the full traceback of an error.")
    domains = parser.add_subparsers(dest="domain", required=True, metavar="DOMAIN")
    for name, (module, help_line) in DOMAINS.items():
        importlib.import_module(module).add_commands(domains.add_parser(name, help=help_line))
    return parser


def main(argv: list[str] | None = None) -> None:
    from layersync.core.cli_util import run_main

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    run_main(lambda: args.func(args), prog=f"layersync {args.domain} {args.command}", debug="--debug" in argv)


if __name__ == "__main__":
    main()
