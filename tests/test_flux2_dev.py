"""FLUX.2 dev specifics: the guidance embedding in training (constant / random-range), the default `generate`
guidance, the Mistral-3 prompt path of the tiny model, and one `flux2` family dispatching on the folder's pipeline."""
import json

import pytest
import torch

from conftest import PROMPT, spy_on, write_configs
from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.export.files import read_record
from glancetune.families import get_family, model_info
from glancetune.sampling.sampler import GlanceSampler, resolve_spec


@pytest.fixture(scope="module")
def dev_model(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("flux2-dev") / "model"
    assert main(["tiny", "flux2-dev", str(d)]) == 0
    return str(d)


def train_seeing_guidance(root, model, monkeypatch, **extra):
    """Run `train` on the tiny dev model; return (training calls, eval calls): the `guidance` the transformer got."""
    import diffusers

    cls = diffusers.Flux2Transformer2DModel
    seen = spy_on(monkeypatch, cls, lambda *a, **k: (torch.is_grad_enabled(), k["guidance"].detach().clone()))
    cfg = write_configs(root, model, steps=3, **{"--model_family": "flux2", "--model_flavour": "dev",
                                                 "--flow_custom_timesteps": "900,500,100", **extra})
    assert main(["train", "--config", str(cfg)]) == 0
    seen.restore()
    return [g for train, g in seen if train], [g for train, g in seen if not train]


@pytest.mark.slow
def test_random_range_guidance_is_per_sample_per_step(tmp_path, dev_model, monkeypatch):
    train, evals = train_seeing_guidance(tmp_path, dev_model, monkeypatch, **{
        "--flux_guidance_mode": "random-range", "--flux_guidance_min": 1.5, "--flux_guidance_max": 4.5,
        "--train_batch_size": 2})
    assert len(train) == 3 and all(g.shape == (2,) and g.dtype == torch.float32 for g in train)
    values = torch.cat(train)
    assert values.min() >= 1.5 and values.max() <= 4.5
    assert len(set(values.tolist())) == 6  # one draw per sample per step: all different
    assert len(evals) == 2 and all(torch.equal(g, torch.full_like(g, 3.0)) for g in evals)  # eval: the middle
    record = read_record(tmp_path / "output")[0]
    assert record.guidance_range == [1.5, 4.5] and record.guidance == 3.0


@pytest.mark.slow
def test_constant_guidance_is_the_configured_value(tmp_path, dev_model, monkeypatch):
    train, evals = train_seeing_guidance(tmp_path, dev_model, monkeypatch, **{"--flux_guidance_value": 2.5})
    assert len(train) == 3 and len(evals) == 2
    assert all(torch.equal(g, torch.full([g.shape[0]], 2.5)) for g in train + evals)


def test_default_training_and_generate_guidance(tmp_path, dev_model, capsys, monkeypatch):
    cfg = write_configs(tmp_path, dev_model, **{"--model_family": "flux2", "--model_flavour": "dev"})
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "guidance 1.0" in capsys.readouterr().out  # SimpleTuner's FLUX.2 guide / the Glance FLUX recipe
    # generate defaults to Flux2Pipeline's guidance_scale (4.0) through the embedding: one pass per step
    dev = model_info(dev_model).family
    assert dev.inference_guidance(1.0) == 4.0 and not dev.true_cfg
    assert dev.pipeline_kwargs(None, 512) == {"max_sequence_length": 512, "guidance_scale": 4.0}


def test_tiny_dev_prompt_path(dev_model):
    """The tiny Mistral-3 encoder goes through Flux2Pipeline's own prompt code: batched chat template with the
    system prompt, padding to max_length, hidden states 10/20/30 stacked into the 48-wide context."""
    from diffusers import Flux2Pipeline

    pipe = Flux2Pipeline.from_pretrained(dev_model)
    tok = pipe.tokenizer
    assert pipe.text_encoder.config.text_config.num_hidden_layers == 31
    assert pipe.text_encoder.config.text_config.hidden_size == 16
    embeds, ids = pipe.encode_prompt(prompt=[PROMPT, "x"], device="cpu", max_sequence_length=300)
    assert embeds.shape == (2, 300, 48) and ids.shape == (2, 300, 4)
    assert not torch.equal(embeds[0], embeds[1])
    conv = [[{"role": "system", "content": [{"type": "text", "text": "S"}]},
             {"role": "user", "content": [{"type": "text", "text": "P"}]}]]
    enc = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_tensors="pt", padding="max_length",
                                  truncation=True, max_length=40)
    text = tok.decode(enc["input_ids"][0][enc["attention_mask"][0].bool()])
    assert text == "<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]P[/INST]"
    assert enc["input_ids"].shape == (1, 40) and enc["input_ids"][0, -1] == tok.pad_token_id == 11


def test_one_family_two_pipelines(dev_model):
    klein = model_info("tiny:flux2-klein")
    dev = model_info(dev_model, "flux2", "dev")
    assert klein.family.name == dev.family.name == "flux2"
    assert klein.family.pipeline_class().__name__ == "Flux2KleinPipeline"
    assert dev.family.pipeline_class().__name__ == "Flux2Pipeline"
    assert get_family("flux2").flavour_model("dev") == "black-forest-labs/FLUX.2-dev"
    assert get_family("flux2").flavour_model(None) == "black-forest-labs/FLUX.2-klein-base-9B"
    with pytest.raises(GlanceError, match="model_flavour 'dev' needs a Flux2Pipeline folder, but its "
                                          "model_index.json names Flux2KleinPipeline"):
        model_info("tiny:flux2-klein", "flux2", "dev")
    with pytest.raises(GlanceError, match="model_flavour 'klein-4b' needs a Flux2KleinPipeline folder, but its "
                                          "model_index.json names Flux2Pipeline"):
        model_info(dev_model, "flux2", "klein-4b")
    with pytest.raises(TypeError, match="depends on the model folder"):
        get_family("flux2").pipeline_class()


def test_flavour_mismatch_is_a_cli_error(tmp_path, dev_model, capsys):
    cfg = write_configs(tmp_path, "tiny:flux2-klein", **{"--model_family": "flux2", "--model_flavour": "dev"})
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "error: tiny:flux2-klein: model_flavour 'dev' needs a Flux2Pipeline folder" in err
    assert "Flux2KleinPipeline" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_generate_uses_the_embedding_default(tmp_path, dev_model, spy_forward):
    """A short glance run on dev: `generate` passes guidance 4.0 to the transformer's embedding on every step
    (one pass per step), and `--guidance` overrides it."""
    cfg = write_configs(tmp_path, dev_model, steps=1, **{"--model_family": "flux2"})
    assert main(["glance", "--config", str(cfg)]) == 0
    import diffusers

    cls = diffusers.Flux2Transformer2DModel
    seen = spy_forward(cls, lambda *a, **k: k["guidance"].clone())
    sampler = GlanceSampler.from_spec(resolve_spec(run=tmp_path / "output"), device="cpu")
    sampler([PROMPT], seed=0, width=64, height=64, output_type="latent")
    assert len(seen) == 10 and all(torch.equal(g, torch.tensor([4.0])) for g in seen)
    seen.clear()
    sampler = GlanceSampler.from_spec(resolve_spec(run=tmp_path / "output", guidance=2.0), device="cpu")
    sampler([PROMPT], seed=0, width=64, height=64, output_type="latent")
    assert len(seen) == 10 and all(torch.equal(g, torch.tensor([2.0])) for g in seen)


def test_group_offloaded_mistral3_caches_the_same_embeddings(tmp_path, dev_model):
    """`glancetune cache` with the Mistral-3 encoder block-level group-offloaded (its embedding is called from the
    parent module: train/memory.py onload_nested_first) writes the same text embeddings as without offload."""
    from safetensors.torch import load_file

    keys = {"--model_family": "flux2", "--model_flavour": "dev", "--flow_custom_timesteps": "900,500,100"}
    text = {}
    for name, extra in (("plain", {}), ("offloaded", {"group_offload_text_encoder": True})):
        cfg = write_configs(tmp_path / name, dev_model, cache_dir=str(tmp_path / name / "cache"), **keys, **extra)
        assert main(["cache", "--config", str(cfg)]) == 0
        files = sorted((tmp_path / name / "cache" / "text").rglob("*.safetensors"))
        assert len(files) == 1
        text[name] = load_file(str(files[0]))
    assert text["plain"].keys() == text["offloaded"].keys()
    assert all(torch.equal(text["plain"][k], text["offloaded"][k]) for k in text["plain"])
