"""Encodings of a job's samples, through the on-disk caches: text embeddings and VAE latents.

Each sample's entries are keyed by what determines them (family, encoder identity, dtype, caption / image file
content and exact crop, control image). Only when an entry is missing are the encoders loaded (without the
transformer); latents are encoded `vae_batch_size` images at a time (images of one size and no control image
share a batch); the encoders are released before the transformer is loaded.
"""
from __future__ import annotations

import gc
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .memory import (
    TEXT_ENCODER_KEYS,
    check_disk_offload,
    encoder_precisions,
    gpu_memory_note,
    group_offload,
    offload_dir,
    text_encoders,
    vae_options,
)
from .quantize import load_config, place_and_quantize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a job's model parts come from: the resolved model (`families.ModelInfo`: family, folder, configs),
    pipeline components the caller hands in (tests, the Python API) and the text length the encoders use."""

    info: object
    max_sequence_length: int
    components: dict = field(default_factory=dict)

    @property
    def family(self):
        return self.info.family

    def load_pipeline(self, dtype, **overrides):
        """The family's pipeline from the model folder; `overrides` (component -> object or None) win over the
        caller's components."""
        return self.family.load_pipeline(self.info.path, dtype, **{**self.components, **overrides})


def default_caches(cfg):
    """(text cache, VAE cache) under `cache_dir` (default $GLANCETUNE_HOME/cache)."""
    from ..data.cache import TensorCache
    from ..process import cache_root

    root = Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "cache"
    return TensorCache(root / "text", "text embedding"), TensorCache(root / "vae", "VAE latent")


def sample_caches(cfg, samples):
    """(text cache, VAE cache) per sample: the dataset's `cache_dir_vae` and its text_embeds dataset's
    `cache_dir` where the dataloader JSON gives them, else the defaults under `cache_dir`."""
    from ..data.cache import TensorCache

    text_default, vae_default = default_caches(cfg)
    made = {}

    def get(folder, kind, default):
        if not folder:
            return default
        return made.setdefault((kind, folder), TensorCache(folder, kind))

    return [(get(getattr(s, "text_cache_dir", None), "text embedding", text_default),
             get(getattr(s, "cache_dir_vae", None), "VAE latent", vae_default)) for s in samples]


def text_description(info, caption: str, dtype, max_sequence_length: int, control: str | None = None,
                     text_ids: dict | None = None, cfg=None) -> dict:
    """What a text embedding depends on (its cache key's description); validation prompts use it too, so a prompt
    equal to a caption shares its entry. `text_ids`: the encoders' identities when already computed. A quantized
    text encoder enters it (an int4 embedding is not the bf16 one); at the defaults it is as before that option."""
    from ..data.cache import component_identity

    fam = info.family
    if text_ids is None:
        text_ids = {c: component_identity(info.path, c) for c in fam.text_components()}
    precisions = {c: p for c, p in encoder_precisions(cfg, fam).items() if p != "no_change"} if cfg else {}
    return {"kind": "text", "family": fam.name, "encoders": text_ids, "dtype": str(dtype),
            "max_sequence_length": max_sequence_length, "caption": caption, "control": control,
            **({"precision": precisions} if precisions else {})}


def cache_keys(info, samples, dtype, max_sequence_length: int, cfg=None):
    """(text key, text description, image key, image description) per sample. The image side is keyed by the
    file's content and the exact crop (so a hit decodes nothing); edit models add the control file's content.
    A quantized text encoder and VAE tiling enter the keys (an int4 embedding is not the bf16 one); the default
    settings leave the keys as they were before those options existed."""
    from ..data.cache import component_identity, digest, file_digest

    fam = info.family
    vae_id = component_identity(info.path, "vae")
    text_ids = {c: component_identity(info.path, c) for c in fam.text_components()}
    tiling = {"vae_tiling": True} if cfg is not None and cfg.vae_enable_tiling else {}
    out = []
    for s in samples:
        control = None if s.control_path is None else file_digest(s.control_path)  # edit models: text and latents
        tdesc = text_description(info, s.caption, dtype, max_sequence_length, control, text_ids, cfg)
        idesc = {"kind": "vae", "family": fam.name, "vae": vae_id, "dtype": str(dtype),
                 "image": file_digest(s.image_path), "crop": s.crop.to_dict(), "control": control, **tiling}
        out.append((digest(tdesc), tdesc, digest(idesc), idesc))
    return out


def _latent_batches(samples, todo: list[int], size: int) -> list[list[int]]:
    """Indices to encode together: same pixel size, no control image, at most `size` per batch."""
    groups: dict = {}
    for n in todo:
        s = samples[n]
        key = ("single", n) if s.control_path is not None else (s.width, s.height)
        groups.setdefault(key, []).append(n)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def encode(src: ModelSource, cfg, samples, device, dtype) -> tuple[list[tuple[dict, dict]], int]:
    """Per sample (text kwargs, {"x0", image kwargs}) on the CPU, from the caches; returns them and the number
    of entries computed."""
    caches = sample_caches(cfg, samples)
    keys = cache_keys(src.info, samples, dtype, src.max_sequence_length, cfg)
    found = [[tc.get(tk), vc.get(ik)] for (tk, _, ik, _), (tc, vc) in zip(keys, caches)]
    missing = sum((t is None) + (i is None) for t, i in found)
    if not missing:
        return [tuple(f) for f in found], 0
    for cache in {id(c): c for pair in caches for c in pair}.values():
        cache.check_writable()
    dirs: list = []  # our temporary group-offload folders
    pipe = None
    try:
        t0 = time.perf_counter()
        pipe = load_encoders(src, cfg, device, dtype, any(t is None for t, _ in found), dirs)
        log.info("encoders loaded in %.1fs%s", time.perf_counter() - t0, gpu_memory_note(device))
        _fill(src, cfg, pipe, device, samples, caches, keys, found, dirs)
    finally:
        del pipe
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return [tuple(f) for f in found], missing


def _fill(src: ModelSource, cfg, pipe, device, samples, caches, keys, found, dirs) -> None:
    """Compute and cache the missing entries of `found` (text first, then latents in batches)."""
    fam, max_len = src.family, src.max_sequence_length
    with torch.no_grad():
        for n, s in enumerate(samples):
            if found[n][0] is None:
                tk, tdesc = keys[n][0], keys[n][1]
                found[n][0] = fam.encode_prompts(pipe, [s.caption], device, max_len, control=s.control)
                dropped = fam.dropped_tokens(pipe, s.caption, max_len)
                if dropped:
                    log.info("notice: %s: the caption is %d tokens longer than tokenizer_max_length %d; they are "
                             "dropped", s.image_path.name, dropped, max_len)
                caches[n][0].put(tk, found[n][0], tdesc)
        todo = [n for n in range(len(samples)) if found[n][1] is None]
        if todo:
            place_vae(src, cfg, pipe, device, dirs)
        for batch in _latent_batches(samples, todo, cfg.vae_batch_size):
            first = samples[batch[0]]
            pixels = torch.cat([samples[n].load_pixels() for n in batch])
            x0, image = fam.encode_images(pipe, pixels, control=first.control)
            for n, x, kw in zip(batch, x0.float().split(1), fam.uncollate(image, len(batch))):
                found[n][1] = {"x0": x.clone(), **kw}
                caches[n][1].put(keys[n][2], found[n][1], keys[n][3])


def _place(cfg, module, name: str, precision: str, key: str, device, offload: bool, dirs: list):
    """One encoder component quantized (`quantize_via`) and on the device, or group-offloaded onto it."""
    via = cfg.quantize_via
    if not offload:
        return place_and_quantize(module, precision, via, device, key)
    module = place_and_quantize(module, precision, via, device, key, home=torch.device("cpu"))
    check_disk_offload(module, cfg)
    d = offload_dir(cfg, name)
    if d:
        dirs.append(d)
    group_offload(module, cfg, device, d)
    return module


def load_encoders(src: ModelSource, cfg, device, dtype, text: bool, dirs: list, vae: bool = True):
    """The pipeline without its transformer; the text encoders placed (when `text`) at their precisions, and,
    unless `offload_during_startup`, the VAE too (else `place_vae` places it after the text is encoded).
    Temporary offload folders are appended to `dirs` (the caller removes them). `vae=False`: text only (the
    validation prompts)."""
    fam = src.family
    precisions = encoder_precisions(cfg, fam)
    extra = {}
    qc = load_config(precisions, dtype)
    if qc is not None:
        extra["quantization_config"] = qc
    pipe = src.load_pipeline(dtype, transformer=None, **extra, **({} if vae else {"vae": None}))
    keys = dict(zip(precisions, TEXT_ENCODER_KEYS))
    for name in text_encoders(fam):
        if getattr(pipe, name, None) is not None and text:
            setattr(pipe, name, _place(cfg, getattr(pipe, name), name, precisions[name], keys[name], device,
                                       cfg.group_offload_text_encoder, dirs))
    for name in fam.encoder_components:  # other encoders (none today besides the VAE)
        if not name.startswith("text_encoder") and name != "vae":
            getattr(pipe, name).to(device)
    if vae:
        vae_options(pipe.vae, cfg)
        if not cfg.offload_during_startup:
            place_vae(src, cfg, pipe, device, dirs)
    return pipe


def place_vae(src: ModelSource, cfg, pipe, device, dirs: list) -> None:
    """The VAE on the device (or group-offloaded) for the latents; with `offload_during_startup` the text
    encoders are released first. Idempotent."""
    if getattr(pipe, "_glancetune_vae_placed", False):
        return
    if cfg.offload_during_startup:
        for name in text_encoders(src.family):
            setattr(pipe, name, None)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    pipe.vae = _place(cfg, pipe.vae, "vae", "no_change", "vae", device, cfg.group_offload_vae, dirs)
    pipe._glancetune_vae_placed = True


def encode_texts(src: ModelSource, cfg, texts: list[str], device, dtype, control=None,
                 control_key: str | None = None) -> dict[str, dict]:
    """Text -> embeddings (CPU tensors as cached) of prompts without images (validation prompts, glance_prompts):
    through the text cache, keyed as a caption with the same control file is, so a prompt equal to a caption
    shares its entry; the text encoders load only for what is missing (at their precisions and offload) and are
    released after. `control`: the PIL control image edit families encode a prompt with; `control_key`: a digest
    of its file."""
    from ..data.cache import digest

    cache = default_caches(cfg)[0]
    keys = {t: text_description(src.info, t, dtype, src.max_sequence_length, control_key, cfg=cfg) for t in texts}
    embeds = {t: cache.get(digest(d)) for t, d in keys.items()}
    missing = [t for t, v in embeds.items() if v is None]
    if not missing:
        return embeds
    cache.check_writable()
    dirs: list = []
    try:
        pipe = load_encoders(src, cfg, device, dtype, True, dirs, vae=False)
        with torch.no_grad():
            for t in missing:
                embeds[t] = src.family.encode_prompts(pipe, [t], device, src.max_sequence_length, control=control)
                cache.put(digest(keys[t]), embeds[t], keys[t])
        del pipe
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return embeds
