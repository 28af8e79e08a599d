"""Where the weights live: per-component precision, diffusers' group offloading, VAE tiling/slicing, and the
memory plan `--dry-run` prints.

Phases and components:
  encode  (only on a cache miss) the text encoders, each at its `text_encoder_N_precision`, on the device or
          group-offloaded (`group_offload_text_encoder`: its weights stay in CPU memory, quantized on the device a
          block at a time; quanto and nf4-bnb weights fail in the hooks and are refused, OFFLOAD_FAILS); then the
          VAE, on the device or group-offloaded
          (`group_offload_vae`), with tiling/slicing if asked. `offload_during_startup`: the text encoders leave
          the device before the VAE arrives (else all encoders are placed at once). Everything is released
          before the transformer loads.
  train   the transformer at `base_model_precision` (unquantized weights in `base_model_default_dtype`), on the
          device, or group-offloaded (`enable_group_offload`) in the one form measured to train a LoRA correctly
          (bench/measure/offload_probe.py on the H200): block_level, no stream, not to disk, gradient checkpointing on,
          applied before the adapters. The other forms move the LoRA weights with their blocks (the optimizer
          then finds them on the CPU), keep stale CPU copies of them (streams, disk), or break checkpoint
          recomputation (leaf_level): they are refused for training with one line saying why, as are quanto
          and nf4-bnb bases (torch cannot swap a quanto weight that backward still holds; bitsandbytes crashed
          on CUDA; torchao weights pass). Measured slow: ~10x the step time on an H200 (a warning says so).
Block-level offload of transformers encoders descends to their layer lists (`block_parents`); what diffusers groups
with a nested parent outside its lists is onloaded by the top module's forward (`onload_nested_first`).
"""
from __future__ import annotations

import logging

from ..config.memory import BITS
from ..errors import GlanceError
from .quantize import check_precision, library

log = logging.getLogger(__name__)
OFFLOAD_TRAINING = ("enable_group_offload: training through diffusers' offload hooks is slow (H200, full-size "
                    "random models: Qwen-Image int8-torchao ~20-27 s/step, where int8-quanto without offload takes "
                    "1.9; FLUX.2-dev ~30 s); a 4-bit base usually fits instead (Qwen-Image nf4-bnb: 17.6 GiB at "
                    "2.4 s/step)")
TEXT_ENCODER_KEYS = ("text_encoder_1_precision", "text_encoder_2_precision", "text_encoder_3_precision",
                     "text_encoder_4_precision")


def text_encoders(family) -> list[str]:
    return [c for c in family.encoder_components if c.startswith("text_encoder")]


def encoder_precisions(cfg, family) -> dict[str, str]:
    """{text encoder component: precision}, from text_encoder_1_precision ... in the family's encoder order."""
    names, out = text_encoders(family), {}
    for i, key in enumerate(TEXT_ENCODER_KEYS):
        p = getattr(cfg, key)
        if i < len(names):
            out[names[i]] = p
        elif p != "no_change":
            raise GlanceError(f"{key}: {family.name} has {len(names)} text encoder(s) ({', '.join(names)}); "
                              f"remove the key or set it to no_change")
    return out


def check(cfg, family, device, compute_dtype) -> None:
    """Everything about placement that can fail, before any weights load."""
    if cfg.enable_group_offload:
        check_offload_base(cfg.base_model_precision)
    check_precision("base_model_precision", cfg.base_model_precision, device)
    for key, p in zip(TEXT_ENCODER_KEYS, encoder_precisions(cfg, family).values()):
        check_precision(key, p, device)
        if cfg.group_offload_text_encoder and library(p) in OFFLOAD_FAILS:
            raise GlanceError(f"group_offload_text_encoder: not with {key} {p}: {OFFLOAD_FAILS[library(p)]}; use "
                              f"{key} int8-torchao or no_change with group offload, or {p} without it")
    import torch

    if cfg.base_model_default_dtype == "bf16" and compute_dtype != torch.bfloat16:
        raise GlanceError("base_model_default_dtype: bf16 weights need mixed_precision bf16 (this run computes in "
                          f"{str(compute_dtype).removeprefix('torch.')} on {device.type}); use fp32 or leave it unset")
    if cfg.gradient_checkpointing_backend != "torch" and not cfg.gradient_checkpointing:
        raise GlanceError(f"gradient_checkpointing_backend: {cfg.gradient_checkpointing_backend} acts on what "
                          "gradient checkpointing keeps; set gradient_checkpointing true, or remove the key")
    if cfg.gradient_checkpointing_interval and not cfg.gradient_checkpointing:
        raise GlanceError("gradient_checkpointing_interval: acts on gradient checkpointing; set "
                          "gradient_checkpointing true, or remove the key")
    offloading = cfg.enable_group_offload or cfg.group_offload_text_encoder or cfg.group_offload_vae
    if offloading and cfg.group_offload_use_stream and device.type != "cuda":
        raise GlanceError(f"group_offload_use_stream: needs a CUDA device (this run is on {device.type})")
    if not cfg.enable_group_offload:
        return
    why = None
    if cfg.group_offload_type != "block_level":
        why = "group_offload_type leaf_level breaks gradient-checkpoint recomputation (weights recomputed on the CPU)"
    elif cfg.group_offload_use_stream:
        why = "group_offload_use_stream keeps CPU copies made before training, so LoRA updates would be lost"
    elif cfg.group_offload_to_disk_path:
        why = "group_offload_to_disk_path writes the blocks once, so LoRA updates would be lost"
    elif not cfg.gradient_checkpointing:
        why = "without gradient_checkpointing backward needs the offloaded weights on the device"
    if why:
        raise GlanceError(f"enable_group_offload: {why}; for training use group_offload_type block_level, no "
                          "stream, no disk path, gradient_checkpointing true (the encoders may use any form)")


def enable_checkpointing(transformer, backend: str, device, interval: int | None = None) -> None:
    """diffusers' gradient checkpointing of the transformer's blocks, through its `gradient_checkpointing_func`.
    `interval` n (SimpleTuner's gradient_checkpointing_interval): only blocks 0, n, 2n, ... (in the order of the
    transformer's block lists) are checkpointed; the others run plainly and keep their activations.
    `backend` unsloth (SimpleTuner's name): the same non-reentrant torch checkpoint inside torch's `save_on_cpu`,
    so the one tensor set per block that checkpointing keeps (the block's inputs, saved outside the recomputed
    region) waits in pinned CPU memory instead of on the device and comes back for the block's recomputation;
    what runs inside a block is unchanged."""
    import torch

    if backend == "torch" and (interval or 1) == 1:
        transformer.enable_gradient_checkpointing()
        return
    order = {id(block): i for i, block in enumerate(
        b for _, blocks in transformer.named_children() if isinstance(blocks, torch.nn.ModuleList) for b in blocks)}
    pin = device.type == "cuda"

    def checkpointed(block, *args, **kwargs):
        if order.get(id(block), 0) % (interval or 1):
            return block(*args, **kwargs)
        if backend == "torch":
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False, **kwargs)
        with torch.autograd.graph.save_on_cpu(pin_memory=pin):
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False, **kwargs)

    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpointed)


# precision libraries whose weights fail in diffusers' offload hooks, measured on the H200 (bench/measure/offload_probe.py:
# the trained transformer; bench/measure/encoder_24b.py: a text encoder); torchao weights pass
OFFLOAD_FAILS = {
    "quanto": "the offload hooks cannot move optimum-quanto weights (training: torch \"Couldn't swap QLinear.weight\"; "
              "encoding: they stay on the CPU, \"Expected all tensors to be on the same device\")",
    "bitsandbytes": "bitsandbytes NF4 weights through the offload hooks crashed on CUDA with an illegal memory access "
                    "(training and encoding)",
}


def check_offload_base(precision: str) -> None:
    """The quantized bases the trained transformer's offload hooks fail with."""
    why = OFFLOAD_FAILS.get(library(precision))
    if why:
        raise GlanceError(f"enable_group_offload: not with base_model_precision {precision}: {why}; use "
                          "int8-torchao or no_change with group offload, or nf4-bnb without it")


def block_parents(module) -> list[str]:
    """Names of the submodules that lead to `module`'s outermost block lists (T5: `encoder` for encoder.block;
    Mistral/Qwen: `model`, `language_model` for model.language_model.layers): diffusers' block-level offloading
    groups only the lists among a module's direct children and descends into `block_modules` by name. diffusers
    models that need it say so themselves (`_group_offload_block_modules`)."""
    import torch

    lists = [n for n, m in module.named_modules() if n and isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))
             and len(m) > 1]
    outer = [n for n in lists if not any(n.startswith(o + ".") for o in lists)]
    return sorted({part for n in outer for part in n.split(".")[:-1]})


def group_offload(module, cfg, device, disk_dir: str | None = None) -> None:
    """diffusers' group offloading of `module` onto `device` with the config's group_offload_* settings;
    `disk_dir`: a fresh folder of ours for `group_offload_to_disk_path` (diffusers reuses files it finds there)."""
    from diffusers.hooks import apply_group_offloading

    check_disk_offload(module, cfg)
    kind = cfg.group_offload_type
    own = getattr(module, "_group_offload_block_modules", None)
    blocks = own or block_parents(module) or None
    if kind == "block_level" and blocks and not own:
        onload_nested_first(module, set(blocks))
    apply_group_offloading(module, onload_device=device, offload_type=kind,
                           num_blocks_per_group=cfg.group_offload_blocks_per_group if kind == "block_level" else None,
                           use_stream=cfg.group_offload_use_stream, offload_to_disk_path=disk_dir,
                           block_modules=blocks if kind == "block_level" else None)


def onload_nested_first(module, blocks: set[str]) -> None:
    """Make `module`'s forward onload what diffusers groups with each nested block parent outside its block lists.

    diffusers onloads that "unmatched" group (embeddings, final norms) when the nested module's own forward starts,
    but transformers models call some of it from a parent: Mistral3Model and Qwen2.5-VL's model run
    `language_model.embed_tokens` before `language_model` (on the H200: "index is on cuda:0, different from other
    tensors on cpu"). Registered before `apply_group_offloading`, this hook runs inside the top module's own onload,
    so a weight tied to the top group (T5's `shared`) ends with the nested group's copy, as the nested forward
    would leave it. Each nested group is still offloaded when its module's forward ends."""
    from diffusers.hooks import HookRegistry, ModelHook

    nested = []

    def walk(parent):
        for name, child in parent.named_children():
            if name in blocks:
                nested.append(child)
                walk(child)

    walk(module)

    class OnloadNested(ModelHook):
        def pre_forward(self, _module, *args, **kwargs):
            for child in nested:
                hook = HookRegistry.check_if_exists_or_initialize(child).get_hook("group_offloading")
                if hook is not None and hook.group.onload_leader is child:
                    hook.group.onload_()
            return args, kwargs

    HookRegistry.check_if_exists_or_initialize(module).register_hook(OnloadNested(), "glancetune_onload_nested")


def check_disk_offload(module, cfg) -> None:
    """diffusers' leaf_level disk offload restores a weight used under two names (T5's tied embedding) wrongly."""
    if cfg.group_offload_to_disk_path and cfg.group_offload_type == "leaf_level":
        names: dict[int, list[str]] = {}
        for n, p in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
        tied = next((n for n in names.values() if len(n) > 1), None)
        if tied:  # each leaf becomes a group of its own and the second one reloads the wrong data from disk
            raise GlanceError(f"group_offload_to_disk_path: {type(module).__name__} uses one weight under two names "
                              f"({tied[0]}, {tied[1]}), which diffusers' leaf_level disk offload restores wrongly; "
                              "use group_offload_type block_level, or offload to memory")


def offload_dir(cfg, name: str) -> str | None:
    """A new folder under `group_offload_to_disk_path` for one component's offloaded groups (None: in memory)."""
    if not cfg.group_offload_to_disk_path:
        return None
    import os
    import tempfile

    try:
        os.makedirs(cfg.group_offload_to_disk_path, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".glancetune-offload-{name}-", dir=cfg.group_offload_to_disk_path)
    except OSError as e:
        raise GlanceError(f"group_offload_to_disk_path: cannot write {cfg.group_offload_to_disk_path} "
                          f"({e.strerror or type(e).__name__})") from None


def peak_memory(device) -> tuple[float, float] | None:
    """(max allocated, max reserved) GiB on a CUDA device since the last call; the counters restart."""
    if device.type != "cuda":
        return None
    import torch

    out = torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return out


def allocator_note(stats: dict) -> str:
    """What torch's CUDA caching allocator reserved beyond the tensors, from `torch.cuda.memory_stats()` since the
    last peak reset: a phase whose reserved peak is well above its allocated peak (FLUX.2-klein nf4: 19.57 for 13.94
    GiB on an H200) is fragmentation (inactive split blocks) or cached segments; the job logs this after training."""
    gib = 2**30
    return (f"allocator (train): reserved peak {stats.get('reserved_bytes.all.peak', 0) / gib:.2f} GiB, inactive "
            f"split blocks peak {stats.get('inactive_split_bytes.all.peak', 0) / gib:.2f} GiB, "
            f"{stats.get('segment.all.peak', 0)} segments at most, {stats.get('num_alloc_retries', 0)} cudaMalloc "
            f"retries, {stats.get('num_ooms', 0)} out-of-memory")


def gpu_memory_note(device) -> str:
    """'; GPU memory: X GiB allocated now, peak A / R GiB (allocated / reserved)' on CUDA ('' elsewhere); the
    peak counters are left running (the job's `peak_memory` phases stay whole)."""
    if device.type != "cuda":
        return ""
    import torch

    now, peak = torch.cuda.memory_allocated(device) / 2**30, torch.cuda.max_memory_allocated(device) / 2**30
    return (f"; GPU memory: {now:.2f} GiB allocated now, peak {peak:.2f} / "
            f"{torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB (allocated / reserved)")


def vae_options(vae, cfg) -> None:
    """VAE tiling / slicing (diffusers' own switches) when the config asks."""
    for key, method in (("vae_enable_tiling", "enable_tiling"), ("vae_enable_slicing", "enable_slicing")):
        if getattr(cfg, key):
            if not callable(getattr(vae, method, None)):
                raise GlanceError(f"{key}: {type(vae).__name__} has no {method}()")
            getattr(vae, method)()


# --- the memory plan (--dry-run) ---------------------------------------------------------------------------
def _gib(params: int | None, bits: int) -> str:
    if params is None:
        return "size unknown"
    count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params:,}"
    size = params * bits / 8
    return f"{count} params, ~" + (f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB")


def component_params(path, component: str) -> int | None:
    """Parameter count of a local component folder, from its safetensors headers (nothing loaded)."""
    import json
    import struct
    from pathlib import Path

    folder = Path(path) / component
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for k, v in header.items():
            if k != "__metadata__":
                n = 1
                for d in v["shape"]:
                    n *= d
                total += n
    return total


def memory_plan(cfg, fam, path, device, compute_bits: int, transformer_params: int | None) -> list[str]:
    """Lines of `--dry-run`: per phase, each component's precision, estimated weight size and placement
    (`path`: the model folder)."""
    dev = device.type

    def where(offloaded: bool) -> str:
        if not offloaded:
            return f"on {dev}"
        stream = ", stream" if cfg.group_offload_use_stream else ""
        disk = f", to disk {cfg.group_offload_to_disk_path}" if cfg.group_offload_to_disk_path else ""
        return f"group-offloaded ({cfg.group_offload_type}{stream}{disk}; CPU -> {dev} as it runs)"

    enc, text_bytes = [], 0.0
    for comp, p in encoder_precisions(cfg, fam).items():
        bits, n = BITS[p] or compute_bits, component_params(path, comp)
        enc.append(f"{comp} {p} ({_gib(n, bits)}) {where(cfg.group_offload_text_encoder)}")
        text_bytes += 0 if cfg.group_offload_text_encoder else (n or 0) * bits / 8
    vae_extra = ", ".join(k.removeprefix("vae_enable_") for k in ("vae_enable_tiling", "vae_enable_slicing")
                          if getattr(cfg, k))
    n_vae = component_params(path, "vae")
    enc.append(f"vae ({_gib(n_vae, compute_bits)}) {where(cfg.group_offload_vae)}"
               + (f", {vae_extra}" if vae_extra else ""))
    vae_bytes = 0 if cfg.group_offload_vae else (n_vae or 0) * compute_bits / 8
    order = ("text encoders released before the VAE is placed (offload_during_startup)"
             if cfg.offload_during_startup else "all placed at once")
    tp = cfg.base_model_precision
    tbits = BITS[tp] or (32 if cfg.base_model_default_dtype == "fp32" else compute_bits)
    on_device = {"encode": max(text_bytes, vae_bytes) if cfg.offload_during_startup else text_bytes + vae_bytes,
                 "train": 0 if cfg.enable_group_offload else (transformer_params or 0) * tbits / 8}
    return ["memory plan (weights only; activations, LoRA and optimizer states come on top):",
            f"  encode (only on a cache miss; {order}; released before training): " + "; ".join(enc),
            f"  train: transformer {tp} ({_gib(transformer_params, tbits)}) {where(cfg.enable_group_offload)}; "
            "no text encoder or VAE loaded" + checkpoint_note(cfg),
            "  save: LoRA weights only (fp32)", *fit_lines(on_device, device_total(device)), *slow_notes(cfg)]


def slow_notes(cfg) -> list[str]:
    """The measured slow settings, said before a run (a CUDA run also logs them as warnings)."""
    from .quantize import INT4_TRAINING

    return [f"  note: {text}" for on, text in ((cfg.base_model_precision == "int4-quanto", INT4_TRAINING),
                                               (cfg.enable_group_offload, OFFLOAD_TRAINING)) if on]


def checkpoint_note(cfg) -> str:
    if not cfg.gradient_checkpointing:
        return ""
    n = cfg.gradient_checkpointing_interval or 1
    which = "every block" if n == 1 else f"one block in {n} (0, {n}, {2 * n}, ...; the others keep their activations)"
    where = (", their inputs waiting in CPU memory (gradient_checkpointing_backend unsloth)"
             if cfg.gradient_checkpointing_backend == "unsloth" else "")
    return f"; gradient checkpointing of {which}{where}"


def device_total(device) -> int | None:
    """A CUDA device's memory in bytes; None elsewhere (nothing to compare the plan with)."""
    import torch

    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device).total_memory


def fit_lines(on_device: dict[str, float], total: int | None) -> list[str]:
    """The plan against the device's memory: a phase whose weights alone exceed 90% of it cannot run."""
    if total is None:
        return []
    over = [f"{phase} (~{b / 2**30:.1f} GiB of weights)" for phase, b in on_device.items() if b > 0.9 * total]
    if not over:
        return [f"  fits: the weights of each phase are under this GPU's {total / 2**30:.0f} GiB (measured peaks "
                "with activations: README, 'what fits')"]
    return [f"  DOES NOT FIT this GPU's {total / 2**30:.0f} GiB: " + ", ".join(over) + "; lower "
            "base_model_precision / text_encoder_N_precision (nf4-bnb, int8-quanto) or group-offload that phase "
            "(README, 'what fits')"]
