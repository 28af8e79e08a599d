"""Quantized base weights (optimum-quanto, torchao) on the tiny model: both phases train with the loss going down, and the
LoRA is an ordinary one: stock `load_lora_weights` puts it into the unquantized base and changes the output."""
import json

import numpy as np
import pytest
import torch

from conftest import PROMPT, run_err, write_configs
from glancetune.cli import main


def quantized(module) -> bool:
    """A linear layer whose weights quanto or torchao replaced."""
    from optimum.quanto import QLinear

    return isinstance(module, QLinear) or type(module.weight).__module__.startswith("torchao")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8-quanto", "int4-quanto", "fp8-quanto", "int8-torchao", "fp8-torchao"])
def test_quantized_base_trains_and_loads_into_the_plain_base(tiny_flux, tmp_path, precision):
    from diffusers import FluxPipeline

    from glancetune.train import job

    seen = []
    orig = job.Job.build_trainer

    def spy(self, plan, rt, transformer, *a, **k):
        seen.append(quantized(transformer.transformer_blocks[0].attn.to_q))
        return orig(self, plan, rt, transformer, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(job.Job, "build_trainer", spy)
    try:
        cfg = write_configs(tmp_path, tiny_flux, steps=8, base_model_precision=precision, learning_rate=5e-3)
        assert main(["glance", "--config", str(cfg)]) == 0
    finally:
        mp.undo()
    assert seen == [True]  # the transformer the adapters were added to was quantized
    out = tmp_path / "output"
    for role in ("slow", "fast"):
        log = json.loads((out / role / "train_log.json").read_text())
        assert log["eval_loss_after"] < log["eval_loss_before"], (role, log)
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    kw = dict(num_inference_steps=2, width=128, height=128, output_type="np", guidance_scale=1.0)
    base = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images[0]
    pipe.load_lora_weights(str(out / "slow"), adapter_name="slow")
    lora = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images[0]
    assert np.abs(lora - base).max() > 1e-4


@pytest.mark.slow
def test_quantization_is_part_of_the_run(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=1)
    assert main(["glance", "--config", str(cfg)]) == 0
    err = run_err(capsys, ["glance", "--config", str(cfg), "--set", "base_model_precision=int8-quanto"])
    assert "base_model_precision" in err  # another run: the output folder / checkpoint check names the key
    err = run_err(capsys, ["glance", "--config", str(cfg), "--set", "base_model_precision=int3-quanto"])
    assert "base_model_precision" in err and "int8-quanto" in err and "nf4-bnb" in err


def test_a_precision_that_needs_cuda_says_so(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, base_model_precision="nf4-bnb")
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err.strip() == ("error: base_model_precision: nf4-bnb needs a CUDA GPU (bitsandbytes 4-bit loading "
                           "through diffusers); on cpu use int4-quanto or int8-torchao")
    assert not (tmp_path / "output").exists()


def test_missing_quanto_is_one_line(tiny_flux, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_quanto(name, *a, **k):
        if name.startswith("optimum.quanto") or name == "optimum":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_quanto)
    cfg = write_configs(tmp_path, tiny_flux, steps=1, base_model_precision="int4-quanto")
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "base_model_precision: int4-quanto needs optimum-quanto" in err
    assert not (tmp_path / "output").exists()


@pytest.mark.slow  # ~95 s: quantizes and samples (measured with --durations)
def test_generate_on_a_quantized_base(glance_run, tmp_path):
    from glancetune.sampling.sampler import GlanceSampler, resolve_spec

    spec = resolve_spec(run=glance_run)
    plain = GlanceSampler.from_spec(spec, device="cpu")([PROMPT], seed=1, output_type="np")[0]
    q = GlanceSampler.from_spec(spec, device="cpu", base_model_precision="int8-quanto")
    from optimum.quanto import QLinear
    assert isinstance(q.pipe.transformer.transformer_blocks[0].attn.to_q.base_layer, QLinear)
    quant = q([PROMPT], seed=1, output_type="np")[0]
    assert 0 < np.abs(quant - plain).max() < 0.25  # the same picture, int8 weights
    # the transformer reached the device block by block, quantized: the same as quantizing it whole once there
    from glancetune.engine.quantize import quantize_model

    whole = GlanceSampler.from_spec(spec, device="cpu")
    quantize_model(whole.pipe.transformer, "int8-quanto")
    assert np.array_equal(whole([PROMPT], seed=1, output_type="np")[0], quant)
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--base-model-precision", "int4-quanto",
                 "--output", str(tmp_path / "q.png")]) == 0


def test_generate_on_torchao_and_refusals(glance_run, tmp_path, capsys):
    assert main(["generate", "--run", str(glance_run), "--prompt", PROMPT, "--base-model-precision", "int8-torchao",
                 "--output", str(tmp_path / "t.png")]) == 0
    err = run_err(capsys, ["generate", "--run", str(glance_run), "--prompt", PROMPT, "--base-model-precision",
                           "nf4-bnb", "--output", str(tmp_path / "b.png")])
    assert err.startswith("error: --base-model-precision: nf4-bnb needs a CUDA GPU")
    assert not (tmp_path / "b.png").exists()
    for precision, kind in (("int8-quanto", "WeightQBytesTensor"), ("int8-torchao", "Int8Tensor")):
        err = run_err(capsys, ["generate", "--run", str(glance_run), "--prompt", PROMPT, "--base-model-precision",
                               precision, "--lora-mode", "fused", "--output", str(tmp_path / "f.png")])
        assert err == (f"error: --lora-mode: fused needs plain base weights, but this transformer's are quantized "
                       f"({kind}); use --lora-mode unfused with --base-model-precision")
        assert not (tmp_path / "f.png").exists()


class _StaysPut(torch.nn.Sequential):
    """A model whose move is recorded, not done (this machine has no CUDA device to move to)."""

    def to(self, *args, **kwargs):
        self.moved_to = args[0] if args else kwargs.get("device")
        return self


@pytest.mark.parametrize("precision, device, warns", [("int4-quanto", "cuda", True), ("int8-quanto", "cuda", False),
                                                      ("int4-quanto", "cpu", False)])
def test_int4_quantized_on_the_cpu_for_a_gpu_warns(caplog, precision, device, warns):
    """quanto packs bf16 int4 weights made on the CPU for the CPU (tinygemm) and re-packs them through an identity
    matmul when they change device type: with quantize_via cpu and a GPU target that is said, once, naming the key."""
    from glancetune.engine.quantize import place_and_quantize

    model = _StaysPut(torch.nn.Linear(256, 256, dtype=torch.bfloat16))
    with caplog.at_level("WARNING", logger="glancetune.engine.quantize"):
        out = place_and_quantize(model, precision, "cpu", torch.device(device), "text_encoder_2_precision")
    assert out.moved_to == torch.device(device)
    hits = [r.getMessage() for r in caplog.records if "identity matmul" in r.getMessage()]
    assert hits == ([hits[0]] if warns else [])
    if warns:
        assert hits[0].startswith("text_encoder_2_precision: int4-quanto with quantize_via cpu")
        assert type(out[0].weight).__name__.startswith("TinyGemm")  # the CPU packing the warning is about


@pytest.mark.parametrize("build,component", [("flux", "transformer"), ("flux", "text_encoder_2"),
                                             ("qwen_image", "text_encoder")])
@pytest.mark.parametrize("precision", ["int8-quanto", "int8-torchao"])
def test_quantizing_block_by_block_equals_quantizing_the_whole(build, component, precision):
    """`quantize_via: accelerator` moves and quantizes one block at a time (the device never holds the whole
    unquantized model); the pieces cover every layer once, bare layers included, so the result equals quantizing
    the whole model: the same module types and the same stored values."""
    import copy

    from glancetune.families import tiny
    from glancetune.engine.quantize import parts, place_and_quantize, quantize_model

    model = getattr(tiny.builders()[build](), component)
    pieces = [piece for _, _, piece in parts(model)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    covered = [m for piece in pieces for m in piece.modules() if isinstance(m, torch.nn.Linear)]
    assert len(covered) == len(linears) and {id(m) for m in covered} == {id(m) for m in linears}
    whole, blockwise = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(whole, precision)
    blockwise = place_and_quantize(blockwise, precision, "accelerator", torch.device("cpu"))
    assert [type(m) for m in whole.modules()] == [type(m) for m in blockwise.modules()]
    a, b = whole.state_dict(), blockwise.state_dict()

    def plain(t):
        return t.dequantize() if hasattr(t, "dequantize") else t

    assert a.keys() == b.keys() and all(torch.equal(plain(a[k]), plain(b[k])) for k in a)
    assert any(quantized(m) for m in blockwise.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("precision", ["no_change", "int8-torchao"])
def test_an_offloaded_model_visits_the_device_one_block_at_a_time(monkeypatch, precision):
    """Group-offloaded components stay in CPU memory (`home`): unquantized, they never go to the device; quantized
    there (`quantize_via: accelerator`), one block at a time. (On the H200 a bf16 24B text encoder with
    group_offload_text_encoder went to the GPU whole first: a 44 GiB peak.) torch.device("cpu", 0) stands for the
    accelerator here: every move to it is recorded with the size of what moves."""
    from glancetune.families import tiny
    from glancetune.engine.quantize import parts, place_and_quantize

    model = tiny.builders()["flux"]().text_encoder_2
    device, home = torch.device("cpu", 0), torch.device("cpu")
    largest = max(sum(p.numel() for p in piece.parameters()) for _, _, piece in parts(model))
    moves, original = [], torch.nn.Module.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if target == device:
            moves.append(sum(p.numel() for p in self.parameters()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    place_and_quantize(model, precision, "accelerator", device, "text_encoder_2_precision", home=home)
    assert (moves == []) if precision == "no_change" else (len(moves) > 1 and max(moves) <= largest)
    assert all(t.device == home for t in model.state_dict().values())
