"""Settings that trade start-up time for step time, decided from GPU measurements (bench/RESULTS.md).

`compile_transformer: auto` (the default) compiles the transformer's repeated blocks (diffusers'
`compile_repeated_blocks`) only where it was measured to pay: on CUDA, an unquantized base without group offload,
and enough steps in the process to repay the compile. FLUX.1-dev on an H200 (session 12, `glance`, both adapters):
0.96 -> 0.68 s/step for 70 s of compiling with a cold inductor cache, 10 s with a warm one (glancetune keeps the
cache under its home folder, process.py), so it pays after ~250 steps cold; the threshold is the cold figure. In a
whole job warm compiling costs more (~28 s, session 15), so a warm run compiles from 100 steps. With TREAD (session 13, same run, routes 0.5 over blocks 2..-2): 0.62 s/step compiled for 124 s of
compiling (each block compiles its routed and whole-token graphs), against ~0.81 eager (TREAD's -16% of session 9
on 0.96): ~0.2 s saved per step, so it pays after ~600 steps. Quantized bases, group offload and DDP / FSDP runs
under compile have no GPU figure yet, so auto leaves them eager; `compile_transformer: true` still forces it.
CUDA graphs (`mode="reduce-overhead"`) failed in the first forward: every block replays the one graph of the block
function, and a replay overwrites the previous block's output still in use ("accessing tensor output of CUDAGraphs
that has been overwritten by a subsequent run"); `max-autotune-no-cudagraphs` autotuned for over 200 s. Neither is
offered (session 13).
A process that trained compiled leaves a mark next to inductor's cache (`mark_compiled`), keyed by what shapes the
compiled graphs (`graph_key`); a later run with the same key starts with the cache warm and compiles from
COMPILE_PAYS_AFTER_WARM steps (the same job run twice: the second compiles).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..errors import GlanceError

log = logging.getLogger(__name__)

# optimizer steps in one process (both phases of a glance job counted); a resumed run counts all its steps, not the
# ones left: the run compiled the same graphs before, so inductor's cache is warm (~30 s in a whole job, repaid in ~100 steps)
COMPILE_PAYS_AFTER = 250
COMPILE_PAYS_AFTER_TREAD = 600  # with tread_config: ~125 s of compiling for ~0.2 s per step
# the same graphs compiled before: the 60+60-step job's second run trained 5.8 s faster compiled than eager (120 steps
# x ~0.28 s saved, so ~28 s of warm compiling; bench/RESULTS.md, session 15). TREAD: not measured warm
COMPILE_PAYS_AFTER_WARM = 100
# the settings besides the model, the adapters' layers and the image shapes that change a compiled block's graphs
GRAPH_KEYS = ("mixed_precision", "lora_rank", "lora_alpha", "lora_dropout", "train_batch_size", "gradient_checkpointing",
              "gradient_checkpointing_interval", "gradient_checkpointing_backend", "tread_config")
# graphs one block function may compile: each adapter (peft's set_adapter flips requires_grad, which dynamo guards)
# x grad mode (eval losses, validation) x input layout x TREAD's routed / whole token counts x bucket shapes. torch's
# default (8) with fullgraph=True is a hard error mid-run (FailOnRecompileLimitHit: a glance job with TREAD on a
# 10-block FLUX.1 on the CPU hit it, as did a tiny glance job with validation images; the failed H200 run of
# session 12, compile + TREAD with two adapters, most likely too: its error was not kept)
RECOMPILE_LIMIT = 64


def compile_blocks(transformer, mode: str | None = None) -> None:
    """Regional compile (diffusers' `compile_repeated_blocks`, fullgraph) with room for the graphs a job makes;
    `mode`: torch.compile's (bench/measure/train_step.py measures `reduce-overhead`, CUDA graphs, with it)."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    transformer.compile_repeated_blocks(fullgraph=True, mode=mode)


def triton_available() -> bool:
    """inductor's CUDA code is Triton; torch's Linux CUDA wheels bring it, others (Windows) may not."""
    from torch.utils._triton import has_triton

    return has_triton()


def check_compile(device_type: str, key: str) -> None:
    """Before any weights load, for a compile that was asked for: what inductor needs on this device (without it the
    first compiled call fails deep in inductor). CUDA: Triton; CPU: a C++ compiler (inductor's own search: g++ by
    default, or `torch._inductor.config.cpp.cxx`)."""
    if device_type == "cuda":
        if not triton_available():
            raise GlanceError(f"{key}: compiling for CUDA needs Triton, which this torch install lacks (pip install "
                              "triton), or leave compiling off")
    if device_type != "cpu":
        return
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise GlanceError(f"{key}: compiling on {device_type} needs a C++ compiler (g++; or set CXX) and none was "
                          "found, or leave compiling off") from None


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def graph_key(cfg, transformer_config: dict, targets, phases: list[str], shapes: list[str], device) -> str:
    """What the compiled block graphs of one process depend on: torch, the device, the transformer's config, the
    adapters (names, layers, settings), the image shapes and GRAPH_KEYS."""
    import torch

    parts = {"torch": torch.__version__, "device": device_name(device), "transformer": transformer_config,
             "targets": targets, "phases": phases, "shapes": sorted(set(shapes)),
             **{k: getattr(cfg, k) for k in GRAPH_KEYS}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def marks_dir() -> Path:
    """Next to inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, or inductor's default): removing it removes them."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir()) / "glancetune-compiled"


def compiled_before(key: str) -> bool:
    return (marks_dir() / key).is_file()


def mark_compiled(key: str) -> None:
    """After a compiled process trained: inductor's cache holds its graphs (a file written whole, or not at all).
    A folder that cannot be written costs the next run its warm start, never this run: a warning."""
    d = marks_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.tmp"
        tmp.write_text("compiled\n")
        tmp.replace(d / key)
    except OSError as e:
        log.warning("compile: could not mark the compiled graphs in %s (%s); a rerun compiles as if cold", d, e)


def compile_decision(cfg, device_type: str, steps: int, phases_here: int, layout: str,
                     warm: bool = False) -> tuple[bool, str]:
    """(compile?, why) for this process: `steps` per phase, `phases_here` phases trained by this process, the
    runtime's process `layout` (single | ddp | parallel-phases | fsdp); `warm`: the same graphs were compiled by an
    earlier run (`compiled_before`)."""
    if cfg.compile_transformer is True:
        return True, "on (compile_transformer: true)"
    if cfg.compile_transformer is False:
        return False, "off (compile_transformer: false)"
    total = steps * phases_here
    if device_type != "cuda":
        why = f"a {device_type} device; it is measured to pay on CUDA"
    elif not triton_available():
        why = "Triton is not installed (inductor compiles CUDA kernels with it)"
    elif cfg.base_model_precision != "no_change":
        why = f"base_model_precision {cfg.base_model_precision} is not measured compiled"
    elif cfg.enable_group_offload:
        why = "enable_group_offload is not measured compiled"
    elif layout in ("ddp", "fsdp"):
        why = f"a {layout.upper()} run is not measured compiled"
    elif total < (need := threshold(cfg, warm)):
        why = f"{total} steps in this process, under the {need} that repay {cost(cfg, warm)} of compiling"
    elif warm and not cfg.tread_config:
        return True, (f"on (auto: {total} steps >= {need}; inductor's cache is warm from an earlier run: "
                      f"{cost(cfg, True)})")
    else:
        return True, (f"on (auto: {total} steps >= {need}; {cost(cfg, False)} of compiling the first time, "
                      f"{cost(cfg, True)} once inductor's cache is warm)")
    return False, f"off (auto: {why})"


def threshold(cfg, warm: bool) -> int:
    if cfg.tread_config:
        return COMPILE_PAYS_AFTER_TREAD
    return COMPILE_PAYS_AFTER_WARM if warm else COMPILE_PAYS_AFTER


def cost(cfg, warm: bool) -> str:
    """The measured compile time (FLUX.1-dev, both adapters, H200): cold, or with inductor's cache warm."""
    return "~125 s" if cfg.tread_config else "~30 s" if warm else "~70 s"
