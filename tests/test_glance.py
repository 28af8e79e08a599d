"""The spine: exact sigmas, stock-diffusers equivalence, stock loading, training effect, reproducibility."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import PROMPT, run_ladder, stock_glance, write_configs
from glancetune.cli import main
from glancetune.export.files import WEIGHT_NAME, read_metadata
from glancetune.export.files import read_record
from glancetune.families.flux import Flux1
from glancetune.sampling.sampler import GlanceSampler, resolve_spec
from glancetune.schedule import Ladder, identity_scheduler_config



ladder_of = run_ladder


@pytest.fixture
def record_timesteps(spy_forward):
    """Intercept every FluxTransformer2DModel call and keep its `timestep` argument as passed (before casts)."""
    from diffusers import FluxTransformer2DModel

    return spy_forward(FluxTransformer2DModel, lambda *args, **kwargs: kwargs["timestep"].detach().clone())


@pytest.mark.slow
def test_generate_sees_exactly_the_trained_sigmas(tiny_flux, tmp_path, record_timesteps):
    cfg = write_configs(tmp_path, tiny_flux, steps=12, timestep_sampling="round-robin")
    assert main(["glance", "--config", str(cfg)]) == 0
    trained = torch.cat(record_timesteps)
    record_timesteps.clear()
    run = tmp_path / "output"
    lad = ladder_of(run)
    assert main(["generate", "--run", str(run), "--prompt", PROMPT, "--output", str(tmp_path / "g.png")]) == 0
    sampled = torch.cat(record_timesteps)
    assert sampled.dtype == torch.float32 and trained.dtype == torch.float32
    expected = Flux1().transformer_timestep(torch.tensor(lad.sigmas), torch.float32)
    assert torch.equal(sampled, expected)  # order and values, bit for bit
    assert set(trained.tolist()) == set(sampled.tolist())  # every training sigma is a sampling sigma, and back
    # the metadata holds the model's own ladder at the training resolution (128px -> 64 tokens)
    from glancetune.families import model_info
    from glancetune.ladder import model_schedule
    own = model_schedule(model_info(tiny_flux), 128, 128, 50)
    assert lad.slow == tuple(own[i] for i in (0, 2, 4, 6, 8))
    assert lad.fast == tuple(own[i] for i in (10, 20, 30, 40, 49))


def test_generate_equals_stock_diffusers(glance_run, tiny_flux):
    spec = resolve_spec(run=glance_run)
    assert spec.base_model == str(__import__("pathlib").Path(tiny_flux).resolve())
    assert spec.guidance == 1.0 and (spec.width, spec.height) == (128, 128)
    ours = GlanceSampler.from_spec(spec, device="cpu")([PROMPT], seed=7, width=128, height=128,
                                                       output_type="np")[0]
    ref = stock_glance("flux", tiny_flux, glance_run, 7, 128, 128, guidance_scale=1.0)
    assert np.abs(ours - ref).max() <= 1 / 255
    # and the naive recipe (configured scheduler re-shifting `sigmas=`) does differ
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.load_lora_weights(str(glance_run / "slow"), adapter_name="slow")
    naive = pipe(PROMPT, sigmas=list(ladder_of(glance_run).sigmas), num_inference_steps=10, guidance_scale=1.0,
                 width=128, height=128, generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    assert np.abs(naive - ref).max() > 1 / 255


def test_batch_image_k_uses_seed_plus_k(glance_run):
    sampler = GlanceSampler.from_spec(resolve_spec(run=glance_run), device="cpu")
    batch = sampler([PROMPT, "a blue square"], seed=3, width=128, height=128, output_type="np")
    alone = sampler(["a blue square"], seed=4, width=128, height=128, output_type="np")
    assert np.abs(batch[1] - alone[0]).max() <= 1 / 255


def test_stock_load_changes_output_and_keeps_alpha(glance_run, tiny_flux):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_flux)
    kw = dict(num_inference_steps=3, width=128, height=128, output_type="np")
    base = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images[0]
    for role in ("slow", "fast"):
        pipe.load_lora_weights(str(glance_run / role), adapter_name=role)
        pipe.set_adapters(role)
        out = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw).images[0]
        assert np.abs(out - base).max() > 1e-4, role
        assert pipe.transformer.peft_config[role].lora_alpha == 4 and pipe.transformer.peft_config[role].r == 4


def test_both_phases_trained_and_loss_went_down(glance_run):
    slow = load_file(str(glance_run / "slow" / WEIGHT_NAME))
    fast = load_file(str(glance_run / "fast" / WEIGHT_NAME))
    assert slow.keys() == fast.keys() and all(k.startswith("transformer.") for k in slow)
    for sd in (slow, fast):  # gaussian init starts every lora_B at zero: non-zero means trained
        assert all(sd[k].abs().sum() > 0 for k in sd if "lora_B" in k)
    assert any(not torch.equal(slow[k], fast[k]) for k in slow)
    for role in ("slow", "fast"):
        log = json.loads((glance_run / role / "train_log.json").read_text())
        assert len(log["losses"]) == 8 and log["eval_loss_after"] < log["eval_loss_before"]


def test_metadata_in_the_header(glance_run):
    meta = read_metadata(glance_run / "slow")
    assert meta["glancetune.role"] == "slow"
    assert meta["glancetune.partner"] == "../fast/pytorch_lora_weights.safetensors"
    record = read_record(glance_run / "slow")[0]
    assert record.phases["slow"] == list(ladder_of(glance_run).slow)
    assert record.guidance == 1.0 and record.resolution == (128, 128)
    assert json.loads(meta["lora_adapter_metadata"])["transformer.lora_alpha"] == 4
    assert read_metadata(glance_run / "fast")["glancetune.role"] == "fast"
    # one record, written once per header; the run folder's config holds the same record
    assert sorted(k for k in meta if k.startswith("glancetune.")) == ["glancetune.format_version", "glancetune.partner",
                                                                "glancetune.role", "glancetune.run"]
    config = json.loads((glance_run / "glancetune_config.json").read_text())
    assert config["record"] == record.to_dict()


@pytest.mark.slow
def test_same_seed_same_bytes_and_glance_phase_equals_train(tiny_flux, glance_run, tmp_path):
    cfg = write_configs(tmp_path, tiny_flux, steps=8)
    assert main(["glance", "--config", str(cfg)]) == 0
    for role in ("slow", "fast"):
        a = (glance_run / role / WEIGHT_NAME).read_bytes()
        b = (tmp_path / "output" / role / WEIGHT_NAME).read_bytes()
        assert a == b, role
    # a different seed gives different weights
    assert main(["glance", "--config", str(cfg), "--set", "seed=1", "--set", f"output_dir={tmp_path / 'o2'}"]) == 0
    assert (tmp_path / "o2" / "slow" / WEIGHT_NAME).read_bytes() != a
    # the single-phase trainer on the slow list gives the same tensors as glance's slow phase
    slow_list = ",".join(repr(s) for s in ladder_of(glance_run).slow)
    assert main(["train", "--config", str(cfg), "--set", f"flow_custom_timesteps={slow_list}",
                 "--set", f"output_dir={tmp_path / 'single'}"]) == 0
    one = load_file(str(tmp_path / "single" / WEIGHT_NAME))
    ref = load_file(str(glance_run / "slow" / WEIGHT_NAME))
    assert one.keys() == ref.keys() and all(torch.equal(one[k], ref[k]) for k in one)


def test_generate_cli_writes_png_with_parameters(glance_run, tmp_path, capsys):
    out = tmp_path / "img.png"
    assert main(["generate", "--slow", str(glance_run / "slow"), "--fast", str(glance_run / "fast"),
                 "--prompt", PROMPT, "--prompt", "a cat", "--seed", "5", "--output", str(out), "--width", "64",
                 "--height", "96", "--guidance", "2.5"]) == 0
    from PIL import Image
    for k in (0, 1):
        im = Image.open(tmp_path / f"img-{k}.png")
        assert im.size == (64, 96)
        info = json.loads(im.text["glancetune"])
        assert info["seed"] == 5 + k and info["guidance"] == 2.5
    assert "5 slow + 5 fast" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_transformer_trains_the_same(tiny_flux, glance_run, tmp_path):
    """Regional compile (inductor on CPU here) gives the same LoRA as eager, up to float reordering. A glance job
    compiles each block function several times (per adapter, grad mode, layout): with torch's recompile limit
    lowered to 2 here (8 by default, which a TREAD glance job on a larger model passes), fullgraph would fail
    mid-run unless the job raises it (train/speed.py RECOMPILE_LIMIT)."""
    import torch._dynamo

    from test_speed import plan_key

    from glancetune.engine.speed import compiled_before

    cfg = write_configs(tmp_path, tiny_flux, steps=8, compile_transformer=True)
    key = plan_key(cfg, device="cpu")
    assert not compiled_before(key)
    with torch._dynamo.config.patch(recompile_limit=2):
        assert main(["glance", "--config", str(cfg)]) == 0
    assert compiled_before(key)  # a rerun's `compile_transformer: auto` counts inductor's cache as warm
    for role in ("slow", "fast"):
        a = load_file(str(glance_run / role / WEIGHT_NAME))
        b = load_file(str(tmp_path / "output" / role / WEIGHT_NAME))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4, role


def test_dry_run_counts_the_trainable_parameters_without_weights(glance_run, capsys):
    """--dry-run counts LoRA parameters on a weightless copy of the transformer: the count training reports."""
    cfg = glance_run.parent / "config" / "glance.json"
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    trained = json.loads((glance_run / "slow" / "train_log.json").read_text())["trainable_params"]
    assert f"trainable LoRA parameters per phase: {trained:,}" in out
    assert '"lora_rank": 4' in out.split("resolved config: ")[1]
