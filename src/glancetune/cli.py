"""The `glancetune` command line. Each command's parser and handler live in the module that implements it; this
file registers them and runs the one asked for:

  train, glance, cache, quickstart   train/commands.py
  generate, schedule                 sampling/commands.py
  eval                               evaluation/evaluate.py
  export                             export/comfyui.py
  validate-dataset                   data/validate.py
  tiny                               families/tiny.py
  server                             server/__init__.py
  serve                              server/serve.py
"""
from __future__ import annotations

import argparse
import sys

from .errors import GlanceError
from .process import quiet_libraries, setup_logging, torch_defaults


def build_parser() -> argparse.ArgumentParser:
    from .data import validate
    from .evaluation import evaluate
    from .export import comfyui
    from .families import tiny
    from .sampling import commands as sampling
    from .server import add_parser as add_server
    from .server import serve
    from .train import commands as training

    p = argparse.ArgumentParser(prog="glancetune", description="Glance slow/fast LoRA training and exact "
                                "chained sampling for flow-matching text-to-image models.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"glancetune {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    training.add_parsers(sub)
    sampling.add_parsers(sub)
    validate.add_parser(sub)
    tiny.add_parser(sub)
    evaluate.add_parser(sub)
    comfyui.add_parser(sub)
    add_server(sub)
    serve.add_parser(sub)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, except that train / glance / cache take unknown `--key=value` items as config overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "config_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = (args.overrides or []) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch_defaults()
    try:
        quiet_libraries(models=getattr(args, "loads_models", True))
        setup_logging()
        return args.handler(args)
    except GlanceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (the loop itself stops after a step, see cmd_train)
        print("interrupted: files already written are complete (every write is atomic); a train/glance run "
              "continues from its last checkpoint when run again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
