"""Encodings of a job's samples, through the on-disk caches: text embeddings and VAE latents.

Each sample's entries are keyed by what determines them (family, encoder identity, dtype, caption / image file
content and exact crop, control image). Only when an entry is missing are the encoders loaded (without the
transformer); latents are encoded `vae_batch_size` images at a time (images of one size and no control image
share a batch); the encoders are released before the transformer is loaded.
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def default_caches(cfg):
    """(text cache, VAE cache) under `cache_dir` (default $GLANCETUNE_HOME/cache)."""
    from ..data.cache import TensorCache
    from ..tiny import cache_root

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
                     text_ids: dict | None = None) -> dict:
    """What a text embedding depends on (its cache key's description); validation prompts use it too, so a prompt
    equal to a caption shares its entry. `text_ids`: the encoders' identities when already computed."""
    from ..data.cache import component_identity

    fam = info.family
    if text_ids is None:
        text_ids = {c: component_identity(info.path, c) for c in fam.text_components()}
    return {"kind": "text", "family": fam.name, "encoders": text_ids, "dtype": str(dtype),
            "max_sequence_length": max_sequence_length, "caption": caption, "control": control}


def cache_keys(info, samples, dtype, max_sequence_length: int):
    """(text key, text description, image key, image description) per sample. The image side is keyed by the
    file's content and the exact crop (so a hit decodes nothing); edit models add the control file's content."""
    from ..data.cache import component_identity, digest, file_digest

    fam = info.family
    vae_id = component_identity(info.path, "vae")
    text_ids = {c: component_identity(info.path, c) for c in fam.text_components()}
    out = []
    for s in samples:
        control = getattr(s, "control_path", None)  # edit models: conditions both text and latents
        control = None if control is None else file_digest(control)
        tdesc = text_description(info, s.caption, dtype, max_sequence_length, control, text_ids)
        idesc = {"kind": "vae", "family": fam.name, "vae": vae_id, "dtype": str(dtype),
                 "image": file_digest(s.image_path), "crop": s.crop.to_dict(), "control": control}
        out.append((digest(tdesc), tdesc, digest(idesc), idesc))
    return out


def _control(sample) -> dict:
    return {"control": sample.control} if getattr(sample, "control_path", None) is not None else {}


def _latent_batches(samples, todo: list[int], size: int) -> list[list[int]]:
    """Indices to encode together: same pixel size, no control image, at most `size` per batch."""
    groups: dict = {}
    for n in todo:
        s = samples[n]
        key = ("single", n) if _control(s) else (s.width, s.height)
        groups.setdefault(key, []).append(n)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def encode(job, device, dtype) -> tuple[list[tuple[dict, dict]], int]:
    """Per sample (text kwargs, {"x0", image kwargs}) on the CPU, from the caches; returns them and the number
    of entries computed. `job`: family, info, samples, cfg, components, max_sequence_length."""
    samples, fam = job.samples, job.family
    caches = sample_caches(job.cfg, samples)
    keys = cache_keys(job.info, samples, dtype, job.max_sequence_length)
    found = [[tc.get(tk), vc.get(ik)] for (tk, _, ik, _), (tc, vc) in zip(keys, caches)]
    missing = sum((t is None) + (i is None) for t, i in found)
    if not missing:
        return [tuple(f) for f in found], 0
    for cache in {id(c): c for pair in caches for c in pair}.values():
        cache.check_writable()
    pipe = fam.load_pipeline(job.info.path, dtype, **{**job.components, "transformer": None})
    for name in fam.encoder_components:
        getattr(pipe, name).to(device)
    with torch.no_grad():
        for n, s in enumerate(samples):
            if found[n][0] is None:
                tk, tdesc = keys[n][0], keys[n][1]
                found[n][0] = fam.encode_prompts(pipe, [s.caption], device, job.max_sequence_length,
                                                 **_control(s))
                dropped = fam.dropped_tokens(pipe, s.caption, job.max_sequence_length)
                if dropped:
                    log.info("notice: %s: the caption is %d tokens longer than tokenizer_max_length %d; they are "
                             "dropped", s.image_path.name, dropped, job.max_sequence_length)
                caches[n][0].put(tk, found[n][0], tdesc)
        todo = [n for n in range(len(samples)) if found[n][1] is None]
        for batch in _latent_batches(samples, todo, job.cfg.vae_batch_size):
            first = samples[batch[0]]
            pixels = torch.cat([samples[n].load_pixels() for n in batch])
            x0, image = fam.encode_images(pipe, pixels, **_control(first))
            for n, x, kw in zip(batch, x0.float().split(1), fam.uncollate(image, len(batch))):
                found[n][1] = {"x0": x.clone(), **kw}
                caches[n][1].put(keys[n][2], found[n][1], keys[n][3])
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [tuple(f) for f in found], missing
