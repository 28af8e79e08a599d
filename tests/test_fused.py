"""`--lora-mode fused` (fused.py): each phase's adapter fused into the base weights for its steps. Images equal
the unfused sampler's to rounding; the base weights are bit-identical after any number of calls (an exact copy is
written back, not diffusers' subtraction); the unfused sampler afterwards is untouched."""
import numpy as np
import pytest
import torch

from conftest import PROMPT, write_configs
from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.sampling.sampler import GlanceSampler, resolve_spec


def base_weights(sampler) -> dict:
    return {n: p.detach().clone() for n, p in sampler.pipe.transformer.named_parameters() if "lora_" not in n}


def test_fused_equals_unfused_and_leaves_the_base_exact(glance_run, tmp_path):
    s = GlanceSampler.from_spec(resolve_spec(run=glance_run), device="cpu")
    before = base_weights(s)
    plain = s([PROMPT], seed=5, output_type="np")[0]
    s.lora_mode = "fused"
    fused = [s([PROMPT], seed=5, output_type="np")[0] for _ in range(3)]
    assert 0 < np.abs(fused[0] - plain).max() <= 1 / 255  # fused weights round differently, within 1/255
    assert all(np.array_equal(f, fused[0]) for f in fused)
    after = base_weights(s)
    assert all(torch.equal(before[k], after[k]) for k in before)
    s.lora_mode = "unfused"
    assert np.array_equal(s([PROMPT], seed=5, output_type="np")[0], plain)
    # the CLI flag
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--lora-mode", "fused",
                 "--output", str(tmp_path / "f.png")]) == 0


@pytest.mark.slow
def test_fused_two_call_chain_of_a_true_cfg_family(tmp_path):
    cfg = write_configs(tmp_path, "tiny:sd3", steps=2, model_family="sd3", checkpointing_steps=0)
    assert main(["glance", "--config", str(cfg)]) == 0
    s = GlanceSampler.from_spec(resolve_spec(run=tmp_path / "output"), device="cpu")
    plain = s([PROMPT], seed=1, cfg_phases="slow", output_type="np")[0]
    s.lora_mode = "fused"
    fused = s([PROMPT], seed=1, cfg_phases="slow", output_type="np")[0]
    assert np.abs(fused - plain).max() <= 1 / 255
    with pytest.raises(GlanceError, match="--lora-mode fused: not with --sampler official-compat"):
        s([PROMPT], seed=1, sampler="official-compat")
    with pytest.raises(GlanceError, match="--lora-mode: 'half' is not one of unfused, fused"):
        s.lora_mode = "half"


@pytest.mark.slow  # ~16 s: compiles the sampler (measured with --durations)
def test_compiled_sampler_gives_the_same_images(glance_run, tmp_path, monkeypatch):
    """`GlanceSampler.compile` (generate --compile, server --compile): regional compile of the inference
    transformer (inductor on the CPU here); images equal the eager sampler's within 1/255 for both adapters, with
    torch's recompile limit lowered to 1 (the sampler raises it: each adapter is its own graph)."""
    import torch._dynamo
    from PIL import Image

    s = GlanceSampler.from_spec(resolve_spec(run=glance_run), device="cpu")
    plain = s([PROMPT], seed=5, output_type="np")[0]
    with torch._dynamo.config.patch(recompile_limit=1):
        s.compile()
        compiled = s([PROMPT], seed=5, output_type="np")[0]
    assert np.abs(compiled - plain).max() <= 1 / 255
    assert s.pipe.transformer.transformer_blocks[0]._compiled_call_impl is not None  # compiled, not eager
    compiled_calls = []
    monkeypatch.setattr(GlanceSampler, "compile", lambda self: compiled_calls.append(self))
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--compile",
                 "--output", str(tmp_path / "c.png")]) == 0
    assert len(compiled_calls) == 1 and Image.open(tmp_path / "c.png").size == (plain.shape[1], plain.shape[0])
