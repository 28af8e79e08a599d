"""The seeds' Glance guide, as written (keys with `--`, the Qwen lists, 1024 px, 60 steps, rank 32), on a tiny model."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from glancetune.cli import main
from glancetune.export.files import read_record

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parents[1] / "src" / "glancetune" / "assets"
SLOW = "1000,979.1915,957.5157,934.9171,911.3354"
FAST = "886.7053,745.0728,562.9505,320.0802,20.0"


def seed_config(model, output_dir, timesteps):
    return {"--model_type": "lora", "--model_family": "flux", "--pretrained_model_name_or_path": model,
            "--data_backend_config": "config/multidatabackend.json", "--train_batch_size": 1,
            "--max_train_steps": 60, "--lora_rank": 32, "--output_dir": output_dir,
            "--flow_custom_timesteps": timesteps}


def test_seed_guide_runs_as_written(tiny_flux, tmp_path, monkeypatch, spy_forward):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copyfile(ASSETS / "glance.png", tmp_path / "data" / "glance.png")
    shutil.copyfile(ASSETS / "glance.txt", tmp_path / "data" / "glance.txt")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps(
        [{"backend": "simple", "resolution": 1024, "shuffle": True, "image_dir": "data", "caption_extension": ".txt"}]))
    (tmp_path / "config" / "glance-slow.json").write_text(json.dumps(seed_config(tiny_flux, "output/glance-slow", SLOW)))
    (tmp_path / "config" / "glance-fast.json").write_text(json.dumps(seed_config(tiny_flux, "output/glance-fast", FAST)))
    assert main(["train", "--config", "config/glance-slow.json"]) == 0
    assert main(["train", "--config", "config/glance-fast.json"]) == 0
    record, role = read_record("output/glance-slow")
    assert record.resolution == (1024, 1024) and role == "lora"
    assert record.phases["lora"] == [float(torch.tensor(float(t) / 1000).item())
                                                     for t in SLOW.split(",")]
    from diffusers import FluxTransformer2DModel

    seen = spy_forward(FluxTransformer2DModel, lambda *a, **k: k["timestep"].clone())
    assert main(["generate", "--slow", "output/glance-slow", "--fast", "output/glance-fast", "--prompt",
                 "a sunset", "--output", "glance.png", "--width", "256", "--height", "256"]) == 0
    got = [float(t) * 1000 for t in torch.cat(seen)]
    want = [float(t) for t in (SLOW + "," + FAST).split(",")]
    assert len(got) == 10 and max(abs(a - b) for a, b in zip(got, want)) < 1e-3  # float32 of the seed's values
    assert Path("glance.png").is_file()
