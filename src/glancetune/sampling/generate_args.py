"""`generate`'s arguments and result, shared by the command (sampling/commands.py) and its `serve` client and server
(sampling/remote.py): the one parser both sides read a request with, and the files it produces."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlanceError


class _Raising(argparse.ArgumentParser):
    """generate's arguments parsed from a `serve` request: an error is one line, not an exit."""

    def error(self, message):
        raise GlanceError(message)


def generate_parser() -> argparse.ArgumentParser:
    """generate's arguments alone (remote.py: the server reads a request with them)."""
    g = _Raising(prog="generate", add_help=False)
    add_generate_args(g)
    return g


def add_generate_args(g) -> None:
    g.add_argument("--run", help="folder written by `glancetune glance` (holds slow/ and fast/)")
    g.add_argument("--slow", help="slow LoRA folder or .safetensors file")
    g.add_argument("--fast", help="fast LoRA folder or .safetensors file")
    g.add_argument("--prompt", action="append", required=True, help="prompt (repeat for a batch)")
    g.add_argument("--image", metavar="PATH", help="control image to edit (required for edit models, refused "
                   "for the others)")
    g.add_argument("--seed", type=int, default=0, help="0 to 2^64-1; image k of a batch uses seed+k")
    g.add_argument("--output", default="glance.png", help="image file: .png (parameters in a text chunk), .jpg/.jpeg "
                   "or .webp (parameters in the EXIF UserComment); a batch writes NAME-k.EXT; missing folders are "
                   "created")
    g.add_argument("--width", type=int, help="default: the size the LoRAs were trained at")
    g.add_argument("--height", type=int, help="default: the size the LoRAs were trained at")
    g.add_argument("--guidance", type=float, help="override the guidance stored at training time (>= 0)")
    g.add_argument("--model", help="override the base model stored in the LoRA metadata")
    g.add_argument("--negative-prompt", help="true-CFG families: replaces the pipeline's negative prompt")
    g.add_argument("--cfg-phases", choices=["both", "slow", "fast", "none"],
                   help="true-CFG families: which phases use CFG (default: both, as the official recipes)")
    g.add_argument("--ladder-file", metavar="FILE", help="sample on a searched ladder (search-ladder's JSON): with "
                   "the LoRAs given, or without --run/--slow/--fast the base model alone on it")
    g.add_argument("--ladder-slow-steps", type=int, metavar="K", help="with --ladder-file: the first K sigmas are "
                   "the slow phase (default: half)")
    g.add_argument("--slow-timesteps", help="explicit slow list (for LoRAs without glancetune metadata)")
    g.add_argument("--fast-timesteps", help="explicit fast list (for LoRAs without glancetune metadata)")
    g.add_argument("--sampler", choices=["exact", "official-compat"], default="exact",
                   help="exact: Euler on the ladder itself (default); official-compat: the official Glance Qwen "
                   "pipelines' trajectory (bf16 timesteps, their step grids), for the published weights")
    g.add_argument("--preset", default="auto", metavar="auto|none|glance-qwen",
                   help="published LoRA pair without glancetune metadata: auto-detected by key layout (default), "
                   "forced by name, or none")
    g.add_argument("--lora-mode", choices=["unfused", "fused"], default="unfused",
                   help="fused: each phase's adapter fused into the base weights for its steps (fused.py)")
    g.add_argument("--lora-load", choices=["as-trained", "stock"], default="as-trained",
                   help="as-trained: all LoRA keys, the training alpha (default); stock: exactly what "
                   "pipe.load_lora_weights does")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto: cuda if available)")
    g.add_argument("--compile", action="store_true", help="compile the transformer's blocks first: ~20 s once, then "
                   "~0.76x per image (FLUX.1-dev, H200); pays after ~40 images")
    from ..config.memory import PRECISIONS

    g.add_argument("--base-model-precision", choices=PRECISIONS, default="no_change",
                   help="sample on a quantized transformer (as the config key of train/glance)")
    g.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="URL", help="sample on this `glancetune serve` (default: the one running "
                       "on this machine, if any; else in this process)")
    where.add_argument("--no-server", action="store_true", help="sample in this process even if a `glancetune "
                       "serve` is running")


@dataclass
class Generated:
    """`generate`'s result before it is written: each image file's path and bytes, and the summary line."""

    files: list[tuple[Path, bytes]]
    summary: str
