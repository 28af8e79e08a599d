"""`generate` through the prompt cache (prompt_cache.py): the first call encodes and caches, a repeated prompt
loads no text encoder, and the images equal those of the stock diffusers chain (the pipeline encoding the prompt
itself), for FLUX.1 and a true-CFG family with a negative prompt; edit models are not cached."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PROMPT, write_configs
from glancetune.cli import main


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def text_entries() -> set[Path]:
    import os

    return set((Path(os.environ["GLANCETUNE_HOME"]) / "cache" / "text").rglob("*.safetensors"))


def loaded_encoders(monkeypatch) -> list:
    """Records, per generate call, whether the sampler's pipeline has its text encoders."""
    from glancetune.sampling import sampler as sample

    seen = []
    orig = sample.GlanceSampler.from_spec.__func__

    def spy(cls, *a, **k):
        s = orig(cls, *a, **k)
        seen.append(s.pipe.text_encoder is not None)
        return s

    monkeypatch.setattr(sample.GlanceSampler, "from_spec", classmethod(spy))
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("family,model,extra", [
    ("flux", None, []),
    ("sd3", "tiny:sd3", ["--negative-prompt", "smudged (cache test)"]),  # true CFG: the negative is cached too
])
def test_a_repeated_prompt_loads_no_text_encoder(tiny_flux, tmp_path, monkeypatch, capsys, family, model, extra):
    cfg = write_configs(tmp_path, model or tiny_flux, steps=2, model_family=family, checkpointing_steps=0)
    assert main(["glance", "--config", str(cfg)]) == 0
    run = tmp_path / "output"
    seen = loaded_encoders(monkeypatch)
    prompt = f"{PROMPT} ({family} cache test)"  # not a caption: the first call misses
    before = text_entries()
    gen = ["generate", "--run", str(run), "--prompt", prompt, "--seed", "3", *extra]
    assert main([*gen, "--output", str(tmp_path / "a.png")]) == 0
    assert len(text_entries() - before) == (2 if extra else 1)
    capsys.readouterr()
    assert main([*gen, "--output", str(tmp_path / "b.png")]) == 0
    assert seen == [True, False]
    # the final line splits the load into its parts, which add up to it
    num = r"([\d.]+)"
    m = re.search(rf"load {num}s \(imports {num}, pipeline {num}, to device {num}, adapters {num}, prompts {num}\)",
                  capsys.readouterr().out)
    assert m, "generate's load split"
    assert abs(sum(map(float, m.groups()[1:])) - float(m.group(1))) <= 0.35  # six parts rounded to 0.1
    a, b = pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png")
    assert np.array_equal(a, b)
    # the sampler with the pipeline encoding the prompt itself (the path tested against the stock chain)
    from glancetune.sampling.sampler import GlanceSampler, resolve_spec

    ref = GlanceSampler.from_spec(resolve_spec(run=run))([prompt], seed=3, output_type="np",
                                                        negative_prompt=extra[1] if extra else None)[0]
    assert np.abs(a - np.round(ref * 255)).max() <= 1, family


def test_edit_models_are_not_cached(tmp_path):
    from glancetune.families import model_info
    from glancetune.sampling.prompt_cache import usable

    assert not usable(model_info("tiny:qwen_image_edit"))
    assert usable(model_info("tiny:qwen_image"))
