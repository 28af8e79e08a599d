"""The base model's reference images beside a Glance image, and the grid that shows them side by side.

Used by validation during training (train/validate.py) and by `glancetune eval` (evaluate.py). Both run on a
`GlanceSampler` (sampling/sampler.py), the sampler `glancetune generate` uses:
  - Glance: the sampler itself (slow then fast adapter on the exact ladder);
  - base on the ladder: the same sampler call with the LoRA layers switched off (peft's disable flag), so the
    trajectory differs from Glance only by the adapters;
  - base N steps: the stock pipeline with the model's own scheduler (`sampler.own_scheduler`) and
    `num_inference_steps=N`, adapters off: what the base model gives when sampled the usual way.
All three use the same prompt, seed (CPU generator), size, guidance and CFG policy.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def adapters_off(transformer):
    """The LoRA layers bypassed (base weights only); on exit they are on again and every parameter's
    `requires_grad` is as before (peft's enable/disable touch it)."""
    if not getattr(transformer, "peft_config", None):  # no LoRA loaded (a ladder file alone): the base already
        yield
        return
    flags = [(p, p.requires_grad) for p in transformer.parameters()]
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()
        for p, f in flags:
            p.requires_grad_(f)


def base_own_schedule(sampler, steps: int, prompts, seed: int, width: int, height: int, guidance=None,
                      output_type: str = "pil", negative_prompt=None, prompt_embeds=None, negative_embeds=None,
                      image=None):
    """The base model's own `steps`-step images (its stock scheduler, adapters off); image k: seed + k.
    `image`: the control image of edit models (one prompt per call, as the sampler does)."""
    pipe = sampler.pipe
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    g = sampler.guidance if guidance is None else guidance
    cfg_on, cfg_off = sampler.guidance_kwargs(g, negative_prompt, negative_embeds)
    kwargs = cfg_on if sampler.base_cfg_phases(g) == "both" else cfg_off
    gens = [torch.Generator("cpu").manual_seed(seed + k) for k in range(len(prompts))]
    identity, pipe.scheduler = pipe.scheduler, sampler.own_scheduler
    try:
        with adapters_off(pipe.transformer):
            return pipe(num_inference_steps=steps, width=width, height=height, generator=gens,
                        output_type=output_type, **(prompt_embeds or {"prompt": prompts}), **kwargs,
                        **({"image": image} if image is not None else {})).images
    finally:
        pipe.scheduler = identity


def base_on_ladder(sampler, prompts, seed: int, width: int, height: int, **kwargs):
    """The base model on the Glance ladder: the Glance sampler's own call with the adapters off, and the base
    model's own CFG policy unless `cfg_phases` is given (a distilled pair's record samples without CFG)."""
    if kwargs.get("cfg_phases") is None:
        kwargs["cfg_phases"] = sampler.base_cfg_phases(sampler.guidance if kwargs.get("guidance") is None
                                                       else kwargs["guidance"])
    with adapters_off(sampler.pipe.transformer):
        return sampler(prompts, seed, width, height, **kwargs)


def grid(rows: list[list], columns: list[str], row_labels: list[str] | None = None, pad: int = 4):
    """One image: a header row naming the columns, then one row per entry of `rows` (PIL images, or None for a
    missing one: drawn grey). Cells take the size of the largest image."""
    from PIL import Image, ImageDraw

    cells = [im for r in rows for im in r if im is not None]
    w = max([im.width for im in cells] + [6 * max(map(len, columns), default=0) + 4])  # room for the names
    h = max((im.height for im in cells), default=64)
    head = 14
    left = 0 if not row_labels else min(160, 7 * max(len(s) for s in row_labels) + 2 * pad)
    out = Image.new("RGB", (left + len(columns) * (w + pad) + pad, head + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    for c, name in enumerate(columns):
        draw.text((left + pad + c * (w + pad), 1), name, fill="black")
    for r, row in enumerate(rows):
        y = head + pad + r * (h + pad)
        if row_labels:
            draw.text((pad, y), row_labels[r][:24], fill="black")
        for c, im in enumerate(row):
            x = left + pad + c * (w + pad)
            if im is None:
                draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(128, 128, 128))
            else:
                out.paste(im.convert("RGB"), (x, y))
    return out
