"""Settings that trade start-up time for step time, decided from GPU measurements (bench/RESULTS.md).

`compile_transformer: auto` (the default) compiles the transformer's repeated blocks (diffusers'
`compile_repeated_blocks`) only where it was measured to pay: on CUDA, an unquantized base without group offload or
TREAD, and enough steps in the process to repay the compile. FLUX.1-dev on an H200 (session 12, `glance`, both
adapters): 0.96 -> 0.68 s/step for 70 s of compiling with a cold inductor cache, 10 s with a warm one (glancetune
keeps the cache under its home folder, process.py), so it pays after ~250 steps cold and ~40 warm; the threshold is
the cold figure. Quantized bases, group offload, TREAD and DDP / FSDP runs under compile have no GPU figure yet
(TREAD's first compiled GPU run stopped on the recompile limit below), so auto leaves them eager; `compile_transformer: true` still forces it.
"""
from __future__ import annotations

# optimizer steps in one process (both phases of a glance job counted); a resumed run counts all its steps, not the
# ones left: the run compiled the same graphs before, so inductor's cache is warm (~10 s, repaid in ~40 steps)
COMPILE_PAYS_AFTER = 250
# graphs one block function may compile: each adapter (peft's set_adapter flips requires_grad, which dynamo guards)
# x grad mode (eval losses, validation) x input layout x TREAD's routed / whole token counts x bucket shapes. torch's
# default (8) with fullgraph=True is a hard error mid-run (FailOnRecompileLimitHit: a glance job with TREAD on a
# 10-block FLUX.1 on the CPU hit it, as did a tiny glance job with validation images; the failed H200 run of
# session 12, compile + TREAD with two adapters, most likely too: its error was not kept)
RECOMPILE_LIMIT = 64


def compile_blocks(transformer, mode: str | None = None) -> None:
    """Regional compile (diffusers' `compile_repeated_blocks`, fullgraph) with room for the graphs a job makes;
    `mode`: torch.compile's (bench/train_step.py measures `reduce-overhead`, CUDA graphs, with it)."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    transformer.compile_repeated_blocks(fullgraph=True, mode=mode)


def triton_available() -> bool:
    """inductor's CUDA code is Triton; torch's Linux CUDA wheels bring it, others (Windows) may not."""
    from torch.utils._triton import has_triton

    return has_triton()


def compile_decision(cfg, device_type: str, steps: int, phases_here: int, layout: str) -> tuple[bool, str]:
    """(compile?, why) for this process: `steps` per phase, `phases_here` phases trained by this process, the
    runtime's process `layout` (single | ddp | parallel-phases | fsdp)."""
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
    elif cfg.tread_config:
        why = "tread_config under compile is not measured on a GPU yet"
    elif layout in ("ddp", "fsdp"):
        why = f"a {layout.upper()} run is not measured compiled"
    elif total < COMPILE_PAYS_AFTER:
        why = f"{total} steps in this process, under the {COMPILE_PAYS_AFTER} that repay ~70 s of compiling"
    else:
        return True, (f"on (auto: {total} steps >= {COMPILE_PAYS_AFTER}; ~70 s of compiling the first time, "
                      "~10 s once inductor's cache is warm)")
    return False, f"off (auto: {why})"
