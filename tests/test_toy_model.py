"""The toy model of issue 13 (bench/toy/toy_model.py) at micro scale on the CPU: its data, its saved diffusers folder,
and glancetune's own `glance` and `eval` on it (the path the GPU run takes at full scale, bench/toy/toy_gpu.sh)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from glancetune.cli import main

BENCH = Path(__file__).resolve().parent.parent / "bench" / "toy"
sys.path.insert(0, str(BENCH))
import toy_data as td  # noqa: E402
import toy_model  # noqa: E402
import toy_score  # noqa: E402


def test_carried_data_is_balanced_fashion_mnist():
    images, labels = td.load()
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert images.float().mean() > 50  # real garments, not blank


def test_compose_paints_the_captioned_colour_on_an_uncaptioned_background():
    images, labels = td.load(limit=8)
    n = len(images)
    colour = torch.arange(n) % len(td.COLOURS)
    bg = torch.arange(n) % len(td.BACKGROUNDS)
    zero = torch.zeros(n, dtype=torch.long)
    px = (td.compose(images, colour, bg, zero, zero) + 1) / 2  # [0, 1]
    assert px.shape == (n, 3, 32, 32)
    full = torch.nn.functional.pad(images, (2, 2, 2, 2)) == 255
    for i in range(n):
        want_fg = torch.tensor(list(td.COLOURS.values())[colour[i]])
        want_bg = torch.tensor(td.BACKGROUNDS[bg[i]])
        assert torch.allclose(px[i, :, 0, 0], want_bg, atol=1e-6)  # the 2-px border is background
        if full[i].any():
            y, x = [int(v) for v in torch.nonzero(full[i])[0]]
            assert torch.allclose(px[i, :, y, x], want_fg, atol=1e-6)
    shifted = td.compose(images, colour, bg, torch.full((n,), 2), torch.full((n,), -1))
    assert torch.equal(shifted[:, :, 2:, :-1], td.compose(images, colour, bg, zero, zero)[:, :, :-2, 1:])


def test_quadrant_layout_puts_a_half_size_garment_in_one_cell():
    images, _ = td.load(limit=4)
    n, zero = len(images), torch.zeros(4, dtype=torch.long)
    bg = torch.tensor(td.BACKGROUNDS[0])
    for q in range(4):
        dy, dx = torch.full((n,), 16 * (q // 2)), torch.full((n,), 16 * (q % 2))
        px = (td.compose(images, zero, zero, dy, dx, "quadrant") + 1) / 2
        cell = px[:, :, 16 * (q // 2):16 * (q // 2) + 16, 16 * (q % 2):16 * (q % 2) + 16]
        rest = px.clone()
        rest[:, :, 16 * (q // 2):16 * (q // 2) + 16, 16 * (q % 2):16 * (q % 2) + 16] = bg[:, None, None]
        assert torch.allclose(rest, bg[None, :, None, None].expand_as(rest), atol=1e-6)  # only that cell is painted
        pooled = torch.nn.functional.avg_pool2d(images.float()[:, None] / 255, 2)[:, 0]  # 14x14 coverage
        want = bg[None, :, None, None] * (1 - pooled[:, None]) + torch.tensor(td.COLOURS["red"])[None, :, None,
                                                                                                 None] * pooled[:, None]
        assert torch.allclose(cell[:, :, 1:15, 1:15], want, atol=1e-6)
    with pytest.raises(ValueError, match="layout"):
        td.compose(images, zero, zero, zero, zero, "diagonal")
    px, *_ = td.random_batch(images, torch.zeros(4, dtype=torch.long), 64, torch.Generator().manual_seed(0),
                             "quadrant")
    bg_of = px.flatten(2).median(2).values[:, :, None, None]  # the background covers >= 3/4 of the image
    painted = (px - bg_of).abs().amax(1) > 1e-3  # [64, 32, 32]
    cells = painted.unfold(1, 16, 16).unfold(2, 16, 16).flatten(3).any(-1).flatten(1)
    assert torch.all(cells.sum(1) <= 2)  # one cell, or two where a +-1 px jitter crosses a cell border


def test_captions_are_every_colour_times_class():
    caps = td.captions()
    assert len({c for _, c, _, _ in caps}) == len(td.COLOURS) * len(td.CLASSES) == 80
    assert ("red-ankle-boot", "a red ankle boot", 9, 0) in caps
    assert all(td.caption_index(torch.tensor(k), torch.tensor(c)) == i for i, (_, _, k, c) in enumerate(caps))


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    assert toy_model.main(["--out", str(out), "--smoke", "--device", "cpu"]) == 0
    return out


def test_saved_folder_is_an_ordinary_flux_pipeline(toy):
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    pipe = FluxPipeline.from_pretrained(toy / "model")
    assert isinstance(pipe.transformer, FluxTransformer2DModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.text_encoder_2, T5EncoderModel)
    assert pipe.vae_scale_factor == 2 and pipe.vae.config.latent_channels == 16
    assert pipe.scheduler.config.use_dynamic_shifting  # FLUX.1-dev's scheduler config
    report = json.loads((toy / "toy_report.json").read_text())
    # the saved VAE carries the normalisation measured on its latents
    assert pipe.vae.config.shift_factor == pytest.approx(report["vae"]["shift_factor"])
    assert pipe.vae.config.scaling_factor == pytest.approx(report["vae"]["scaling_factor"])
    assert report["caption_embeddings_min_distance"] > 0  # random encoders still tell every caption apart
    m = report["measure"]
    assert m["pairs"] == 2 and math.isfinite(m["psnr_base10_to_base50_db"][0])
    assert 0 <= m["base10_class_acc"][0] <= 1 and 0 <= m["cfg3-base50_colour_acc"][0] <= 1
    img = pipe(prompt="a red t-shirt", num_inference_steps=2, height=32, width=32, max_sequence_length=32,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert img.shape == (32, 32, 3)
    labels = json.loads((toy / "labels.json").read_text())
    prompts = json.loads((toy / "prompts.json").read_text())
    assert labels["blue-sneaker"] == [7, 2] and prompts["blue-sneaker"] == "a blue sneaker"


@pytest.mark.slow
def test_glancetune_trains_and_evaluates_on_the_toy(toy, tmp_path):
    cfg = json.loads((toy / "config" / "glance.json").read_text())
    assert cfg["pretrained_model_name_or_path"] == str(toy / "model") and cfg["tokenizer_max_length"] == 32
    assert (toy / "data" / "toy.txt").read_text() == "a red t-shirt"
    assert main(["glance", "--config", str(toy / "config" / "glance.json"), "--set", "max_train_steps=2"]) == 0
    run = toy / "glance"
    assert (run / "slow" / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "fast" / "pytorch_lora_weights.safetensors").is_file()
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"red-t-shirt": "a red t-shirt", "blue-bag": "a blue bag"}))
    report = tmp_path / "report"
    assert main(["eval", "--run", str(run), "--prompts", str(prompts), "--seeds", "1", "--steps-base", "4",
                 "--output", str(report)]) == 0
    result = toy_score.score(report, toy)
    assert result["pairs"] == 2
    assert set(result["samplers"]) == {"base-4", "base-10", "base-10-ladder", "glance"}
    for name, row in result["samplers"].items():
        assert 0 <= row["class_acc"][0] <= 1 and 0 <= row["colour_acc"][0] <= 1
        assert ("psnr_to_ref_db" in row) == (name != "base-4")
    # the judge scores the saved PNGs: the same images through it directly give the same verdicts
    from PIL import Image
    import numpy as np

    judge = td.load_judge(toy / "judge.pt")
    arr = np.asarray(Image.open(report / "images" / "blue-bag-0-glance.png").convert("RGB"))
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
    lk, lc = judge(x)
    first = [json.loads((report / "eval.json").read_text())["per_pair"][i]["prompt"] for i in range(2)]
    assert first == ["red-t-shirt", "blue-bag"]
    acc = judge.accuracy(x, torch.tensor([8]), torch.tensor([2]))
    assert acc["class"] == [float(lk.argmax(1).item() == 8)] and acc["colour"] == [float(lc.argmax(1).item() == 2)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trajectory", "rollout", "prior"])
def test_objective_configs_of_the_gpu_run_train(toy, kind):
    path = toy / "config" / f"glance-{kind}.json"
    cfg = json.loads(path.read_text())
    assert cfg.get("glance_objective", "flow") == {"prior": "flow"}.get(kind, kind)
    assert cfg["output_dir"] == str(toy / f"glance-{kind}") and cfg.get("glance_prior_weight", 0) == (kind == "prior")
    if kind != "rollout":  # extra captions without images, never the training caption
        assert len(cfg["glance_prompts"]) == 16 and "a red t-shirt" not in cfg["glance_prompts"]
        assert len({p.split(" ", 2)[2] for p in cfg["glance_prompts"]}) == 10  # every class
    assert main(["glance", "--config", str(path), "--set", "max_train_steps=1"]) == 0
    assert (toy / f"glance-{kind}" / "fast" / "pytorch_lora_weights.safetensors").is_file()
