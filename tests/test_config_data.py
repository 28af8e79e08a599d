"""Config formats and strictness; the simple backend's discovery, captions and image handling."""
import json
import logging
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from conftest import make_dataset, write_configs
from glancetune.cli import main
from glancetune.config.schema import build_config, load_config
from glancetune.data.buckets import target_size
from glancetune.data.discovery import read_caption
from helpers import discover_pairs, load_image
from glancetune.errors import GlanceError
from glancetune.export.files import read_metadata
from glancetune.export.files import read_record


def test_keys_with_and_without_dashes_and_string_numbers():
    a = build_config({"--lora_rank": "8", "--data_backend_config": "x.json", "--max_train_steps": "7"}, "c")
    b = build_config({"lora_rank": 8, "data_backend_config": "x.json", "max_train_steps": 7}, "c")
    assert a == b and a.lora_rank == 8 and a.alpha == 8.0


def test_yaml_toml_and_set_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("data_backend_config: d.json\nlora_rank: 4\nlora_alpha: 16\n")
    (tmp_path / "c.toml").write_text('data_backend_config = "d.json"\nlora_rank = 4\nlora_alpha = 16\n')
    y = load_config(tmp_path / "c.yaml", ["seed=3", "glance_slow_timesteps=1000,990"])
    t = load_config(tmp_path / "c.toml", ["seed=3", "glance_slow_timesteps=1000,990"])
    assert y == t and y.seed == 3 and y.alpha == 16.0


def test_neutral_simpletuner_values_pass_and_real_ones_fail():
    build_config({"data_backend_config": "d", "enable_group_offload": False, "tread_config": None}, "c")
    with pytest.raises(GlanceError, match="'--use_ema' is a SimpleTuner option"):
        build_config({"data_backend_config": "d", "--use_ema": True}, "c")
    with pytest.raises(GlanceError, match="'learning_rate'.*greater than 0"):
        build_config({"data_backend_config": "d", "learning_rate": 0}, "c")


def test_flavour_gives_the_hub_id():
    c = build_config({"data_backend_config": "d", "model_flavour": "dev"}, "c")
    assert c.model_ref == "black-forest-labs/FLUX.1-dev"
    with pytest.raises(GlanceError, match="pretrained_model_name_or_path: required"):
        build_config({"data_backend_config": "d"}, "c").model_ref


def test_target_size_keeps_aspect_and_alignment():
    assert target_size(512, 512, 1024, 16) == (1024, 1024)
    w, h = target_size(1600, 900, 1024, 16)
    assert w % 16 == 0 and h % 16 == 0 and abs(w * h - 1024 ** 2) / 1024 ** 2 < 0.03 and abs(w / h - 16 / 9) < 0.02


def test_discovery_case_insensitive_and_duplicates(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.JPG", format="JPEG")
    (tmp_path / "a.txt").write_text("x")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.webp", format="WEBP")
    (tmp_path / "b.txt").write_text("y")
    assert [p[0].name for p in discover_pairs(tmp_path, ".txt")] == ["a.JPG", "b.webp"]
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(GlanceError, match="duplicate basename"):
        discover_pairs(tmp_path, ".txt")


def test_caption_bom_and_multiline(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("\ufeffa red fox\n  in the snow \r\n".encode("utf-8"))
    assert read_caption(p) == "a red fox in the snow"


def test_exif_orientation_and_alpha(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="glancetune")
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    t = load_image(tmp_path / "r.jpg", 45, 16)  # area ~ 32x64
    assert t.shape[2] > t.shape[3]  # portrait after honouring EXIF
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png", 32, 16)
    assert t.min() > 0.99  # flattened onto white
    assert "notice: a.png: alpha channel flattened onto white" in caplog.messages


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, resolution=256)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "256x256" in out and "phase slow: 5 sigmas" in out and "phase fast: 5 sigmas" in out
    assert not (tmp_path / "output").exists()


def test_explicit_ladder_and_other_n(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, glance_slow_timesteps="1000,980", glance_fast_timesteps=[0.5, 0.1])
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "phase slow: 2 sigmas 1, 0.98" in capsys.readouterr().out
    cfg = write_configs(tmp_path, tiny_flux, glance_ladder_steps=100)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    cfg = write_configs(tmp_path, tiny_flux, glance_ladder_steps=10)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 2
    assert "glance_ladder_steps: 10 is too few" in capsys.readouterr().err


@pytest.mark.slow
def test_multi_image_dataset_trains(tiny_flux, tmp_path):
    make_dataset(tmp_path / "data", n=3)
    cfg = write_configs(tmp_path, tiny_flux, steps=3, **{"--train_batch_size": 2})
    assert main(["glance", "--config", str(cfg)]) == 0
    resolved = json.loads((Path(tmp_path) / "output" / "glancetune_config.json").read_text())
    assert len(resolved["captions"]) == 3


@pytest.mark.parametrize("key", ["lora_target", "--flux_lora_target"])
def test_lora_target_presets(tiny_flux, tmp_path, capsys, key):
    cfg = write_configs(tmp_path, tiny_flux, **{key: "tiny"})
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert "on 3 module types (preset tiny): attn.to_q, attn.to_k, attn.to_v" in capsys.readouterr().out
    cfg = write_configs(tmp_path, tiny_flux, **{key: "mmdit"})
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert key.lstrip("-") in err and "'mmdit'" in err and "all, attention, mlp, tiny" in err


@pytest.mark.slow
def test_tiny_preset_trains_fewer_params_than_all(tiny_flux, tmp_path):
    counts = {}
    for preset in ("tiny", "all"):
        cfg = write_configs(tmp_path / preset, tiny_flux, steps=1, lora_target=preset)
        assert main(["glance", "--config", str(cfg)]) == 0
        counts[preset] = json.loads((tmp_path / preset / "output" / "slow" / "train_log.json").read_text())[
            "trainable_params"]
    assert 0 < counts["tiny"] < counts["all"]


@pytest.mark.slow
def test_random_range_guidance_is_used(tiny_flux, tmp_path, spy_forward):
    from diffusers import FluxTransformer2DModel

    seen = spy_forward(FluxTransformer2DModel, lambda *a, **k: k["guidance"].clone())
    cfg = write_configs(tmp_path, tiny_flux, steps=5, flux_guidance_mode="random-range", flux_guidance_min=1.0,
                        flux_guidance_max=5.0)
    assert main(["glance", "--config", str(cfg)]) == 0
    train = torch.cat(seen[2:12:2])  # skip the two eval passes (midpoint); slow and fast steps alternate
    assert len(set(train.tolist())) == 5 and all(1.0 <= g <= 5.0 for g in train.tolist())
    record = read_record(tmp_path / "output" / "slow")[0]
    assert record.guidance == 3.0 and record.guidance_range == [1, 5]
    cfg = write_configs(tmp_path / "b", tiny_flux, flux_guidance_mode="random-range", flux_guidance_min=2.0)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 2  # max missing


def test_flavours_are_checked():
    for fam, flav, hub in (("flux", "schnell", "black-forest-labs/FLUX.1-schnell"),
                           ("flux2", None, "black-forest-labs/FLUX.2-klein-base-9B"),
                           ("flux2", "klein-4b", "black-forest-labs/FLUX.2-klein-base-4B"),
                           ("flux2", "dev", "black-forest-labs/FLUX.2-dev"),
                           ("qwen_image", None, "Qwen/Qwen-Image")):
        assert build_config({"data_backend_config": "d", "model_family": fam, "model_flavour": flav}, "c").model_ref == hub
    with pytest.raises(GlanceError, match="model_flavour: unknown flavour 'klein-2b' for flux2; valid: klein-9b, klein-4b, dev"):
        build_config({"data_backend_config": "d", "model_family": "flux2", "model_flavour": "klein-2b"}, "c").model_ref
    with pytest.raises(GlanceError, match="unknown flavour 'turbo' for flux"):  # checked with a path given too
        build_config({"data_backend_config": "d", "model_flavour": "turbo",
                      "pretrained_model_name_or_path": "x"}, "c").model_ref


def test_help_lists_every_schema_key(capsys):
    """`train --help` is generated from the schema: every key, its allowed values and defaults."""
    from glancetune.config.schema import NOT_IMPLEMENTED, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key in TrainConfig.model_fields:
        assert f"\n  {key} (" in out, key
    assert ("lr_scheduler (constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial; "
            "default 'constant')") in out
    assert all(k in out for k in NOT_IMPLEMENTED)
