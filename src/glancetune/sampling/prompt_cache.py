"""Prompt embeddings for `generate`, through the text cache training uses ($GLANCETUNE_HOME/cache/text, the same
keys as captions: a prompt equal to a caption or a validation prompt is already there). When every prompt (and
the negative prompt of a true-CFG family) is cached, `generate` loads the pipeline without its text encoders and
samples from the embeddings; otherwise it loads them, encodes with the family's `encode_prompts` (the code that
encodes captions) and stores the result. Edit models encode the prompt with the control image: not cached.
The images are those of the pipeline encoding the prompt itself (tests/test_prompt_cache.py).
"""
from __future__ import annotations

import logging

import torch

from ..errors import GlanceError

log = logging.getLogger(__name__)


class PromptCache:
    """The cached embeddings of `texts` for one model, dtype and text length."""

    def __init__(self, info, texts: list[str], dtype: torch.dtype, max_sequence_length: int):
        from ..data.cache import digest
        from ..engine.encode import default_caches, text_description

        self.info, self.texts = info, list(dict.fromkeys(texts))
        self.max_sequence_length = max_sequence_length
        self.cache = default_caches(_Defaults())[0]
        self.keys = {t: text_description(info, t, dtype, max_sequence_length) for t in self.texts}
        self.digests = {t: digest(d) for t, d in self.keys.items()}
        self.embeds = {t: self.cache.get(self.digests[t]) for t in self.texts}

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.embeds.values())

    def without_encoders(self) -> dict:
        """Pipeline components to leave out when every embedding is cached."""
        fam = self.info.family
        return {c: None for c in fam.encoder_components if c.startswith("text_encoder")} if self.complete else {}

    def fill(self, pipe, device) -> None:
        """Encode the missing texts with `pipe`'s text encoders and store them (an unwritable cache: a notice)."""
        fam = self.info.family
        with torch.no_grad():
            for t in [t for t, v in self.embeds.items() if v is None]:
                self.embeds[t] = {k: v.detach().to("cpu") if isinstance(v, torch.Tensor) else v for k, v in
                                  fam.encode_prompts(pipe, [t], device, self.max_sequence_length).items()}
                try:
                    self.cache.put(self.digests[t], self.embeds[t], self.keys[t])
                except GlanceError as e:
                    log.info("notice: prompt not cached (%s)", e)

    def call_kwargs(self, text: str, device, negative: bool = False) -> dict:
        """`prompt_embeds=`-style pipeline kwargs of one text."""
        tensors = {k: v.to(device) for k, v in self.embeds[text].items() if isinstance(v, torch.Tensor)}
        return self.info.family.prompt_call_kwargs(tensors, negative=negative)


def prepared(sampler, args):
    """The sampler as `generate`'s options set it up: `--lora-mode`, `--compile`."""
    sampler.lora_mode = args.lora_mode
    if args.compile:
        sampler.compile()
    return sampler


def fresh_sampler(spec, args, dtype, components: dict):
    """A newly loaded sampler for `generate` (`components`: pipeline parts to leave out, see without_encoders)."""
    from .sampler import GlanceSampler

    return prepared(GlanceSampler.from_spec(spec, device=args.device, dtype=dtype, lora_load=args.lora_load,
                                            base_model_precision=args.base_model_precision,
                                            components=components), args)


def sample_with_cache(args, spec, info, dtype, control, make=fresh_sampler):
    """`glancetune generate`'s sampling, `args` its parsed arguments: (sampler, images, load seconds). Every prompt
    is one call (image k seeded `seed + k`, as in a batch). `make`: fresh_sampler's signature; a warm server's
    returns its resident sampler (with every component: it encodes a missed prompt itself)."""
    import time

    from ..engine.runtime import compute_dtype, select

    t0 = time.perf_counter()
    fam = info.family
    if not usable(info):
        sampler = make(spec, args, dtype, {})
        load = time.perf_counter() - t0
        return sampler, sampler(args.prompt, seed=args.seed, cfg_phases=args.cfg_phases, image=control,
                                sampler=args.sampler, negative_prompt=args.negative_prompt), load
    device, mp = select(args.device)
    negative = args.negative_prompt if args.negative_prompt is not None else fam.negative_prompt
    texts = args.prompt + ([negative] if fam.true_cfg else [])
    cache = PromptCache(info, texts, dtype or compute_dtype(mp),
                        spec.max_sequence_length or fam.default_max_sequence_length)
    sampler = make(spec, args, dtype, cache.without_encoders())
    if not cache.complete:
        cache.fill(sampler.pipe, device)
    load = time.perf_counter() - t0
    neg = cache.call_kwargs(negative, device, negative=True) if fam.true_cfg else None
    return sampler, [im for k, p in enumerate(args.prompt)
                     for im in sampler([p], seed=args.seed + k, cfg_phases=args.cfg_phases, sampler=args.sampler,
                                       negative_prompt=args.negative_prompt, prompt_embeds=cache.call_kwargs(p, device),
                                       negative_embeds=neg)], load


class _Defaults:
    cache_dir = None  # generate uses the default cache folder


def usable(info) -> bool:
    """Prompts can be cached for this family (not for edit models)."""
    return not info.family.needs_control_image
