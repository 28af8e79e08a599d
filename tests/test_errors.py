"""Bad input: one line naming the file or key, exit status 2, nothing half-written."""
import json
from pathlib import Path

import pytest

from conftest import make_image, write_configs, run_err
from glancetune.cli import main
from glancetune.export.files import read_metadata


def no_output(root: Path):
    assert not (root / "output").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".output")]


def test_missing_caption(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.txt").unlink()
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "img0.png" in err and "no caption file img0.txt" in err
    no_output(tmp_path)


def test_caption_without_image(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "lonely.txt").write_text("x")
    assert "lonely.txt: caption without an image" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n", b"\xef\xbb\xbf  "])
def test_empty_caption(tiny_flux, tmp_path, capsys, content):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.txt").write_bytes(content)
    assert "img0.txt: caption is empty" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


def test_non_utf8_caption(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.txt").write_bytes(b"caf\xe9")
    assert "img0.txt: caption is not UTF-8" in run_err(capsys, ["glance", "--config", str(cfg)])


@pytest.mark.parametrize("payload", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_corrupt_image(tiny_flux, tmp_path, capsys, payload):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "data" / "img0.png").write_bytes(payload)
    assert "img0.png: unreadable or corrupt image" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


def test_truncated_image(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    p = tmp_path / "data" / "img0.png"
    p.write_bytes(p.read_bytes()[:200])
    assert "img0.png: unreadable or corrupt image" in run_err(capsys, ["glance", "--config", str(cfg)])


def test_image_dir_without_pairs(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    for f in (tmp_path / "data").iterdir():
        f.unlink()
    assert "no image/caption pairs" in run_err(capsys, ["glance", "--config", str(cfg)])
    no_output(tmp_path)


def test_missing_image_dir(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    backend = tmp_path / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "image_dir": str(tmp_path / "nope")}]))
    assert "nope: image_dir does not exist" in run_err(capsys, ["glance", "--config", str(cfg)])


def test_unknown_config_key_suggests(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, **{"--lora_rnak": 8})
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "glance.json" in err and "'--lora_rnak'" in err and "did you mean 'lora_rank'" in err


def test_unknown_backend_key_suggests(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    backend = tmp_path / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "image_dir": "data", "caption_extention": ".txt"}]))
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "multidatabackend.json" in err and "did you mean 'caption_extension'" in err


def test_wrong_type_names_key(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, **{"--max_train_steps": "many"})
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "'max_train_steps'" in err and "'many'" in err


@pytest.mark.parametrize("value,needle", [("1000,abc", "not a number"), ("1000,1500", "outside"),
                                          ("1000,0.5", "mixed scales")])
def test_bad_timestep_lists(tiny_flux, tmp_path, capsys, value, needle):
    cfg = write_configs(tmp_path, tiny_flux, **{"--flow_custom_timesteps": value})
    err = run_err(capsys, ["train", "--config", str(cfg)])
    assert "flow_custom_timesteps" in err and needle in err
    no_output(tmp_path)


def test_glance_needs_both_lists(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, glance_slow_timesteps="1000,990")
    assert "glance_fast_timesteps: give both" in run_err(capsys, ["glance", "--config", str(cfg)])


def test_output_dir_with_a_different_run(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=2)
    assert main(["glance", "--config", str(cfg)]) == 0
    before = (tmp_path / "output" / "slow" / "pytorch_lora_weights.safetensors").read_bytes()
    capsys.readouterr()
    err = run_err(capsys, ["glance", "--config", str(cfg), "--set", "max_train_steps=3"])
    assert "output" in err and "different run" in err and "max_train_steps" in err
    assert (tmp_path / "output" / "slow" / "pytorch_lora_weights.safetensors").read_bytes() == before
    assert main(["glance", "--config", str(cfg)]) == 0  # the same run may be redone
    assert main(["glance", "--config", str(cfg), "--set", "max_train_steps=3", "--overwrite"]) == 0
    log = json.loads((tmp_path / "output" / "slow" / "train_log.json").read_text())
    assert len(log["losses"]) == 3


def test_output_dir_with_foreign_files(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "notes.txt").write_text("mine")
    assert "holds files glancetune did not write (notes.txt)" in run_err(capsys, ["glance", "--config", str(cfg)])
    assert (tmp_path / "output" / "notes.txt").read_text() == "mine"


def test_unknown_family_and_mismatched_folder(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, **{"--model_family": "fluxx"})
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "model_family" in err and "'fluxx'" in err and "did you mean 'flux'" in err
    idx = Path(tiny_flux) / "model_index.json"
    fake = tmp_path / "fake"
    fake.mkdir()
    data = json.loads(idx.read_text())
    data["_class_name"] = "StableDiffusion3Pipeline"
    (fake / "model_index.json").write_text(json.dumps(data))
    cfg = write_configs(tmp_path, str(fake))
    assert "StableDiffusion3Pipeline does not match model_family 'flux'" in run_err(
        capsys, ["glance", "--config", str(cfg)])


def test_generate_lora_without_metadata(glance_run, tiny_flux, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    for role in ("slow", "fast"):
        (tmp_path / role).mkdir()
        sd = load_file(str(glance_run / role / "pytorch_lora_weights.safetensors"))
        save_file(sd, str(tmp_path / role / "pytorch_lora_weights.safetensors"))
    argv = ["generate", "--slow", str(tmp_path / "slow"), "--fast", str(tmp_path / "fast"), "--prompt", "x",
            "--output", str(tmp_path / "o.png")]
    err = run_err(capsys, argv)
    assert "no glancetune metadata" in err and "--slow-timesteps" in err and "--model" in err
    assert not (tmp_path / "o.png").exists()
    assert main(argv + ["--slow-timesteps", "1000,990,980,970,960", "--fast-timesteps", "900,700,500,300,60",
                        "--model", tiny_flux, "--width", "64", "--height", "64"]) == 0
    assert (tmp_path / "o.png").is_file()


def test_generate_bad_size_and_missing_dir(glance_run, tmp_path, capsys):
    err = run_err(capsys, ["generate", "--run", str(glance_run), "--prompt", "x", "--width", "100",
                           "--output", str(tmp_path / "o.png")])
    assert "--width/--height" in err and "16" in err
    err = run_err(capsys, ["generate", "--run", str(tmp_path / "nothing"), "--prompt", "x"])
    assert "nothing" in err and "no LoRA file" in err


def test_config_syntax_errors_have_line_and_column(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text('{\n  "lora_rank": 4,\n  "max_train_steps" 5\n}')
    err = run_err(capsys, ["glance", "--config", str(bad)])
    assert "c.json: JSON syntax error at line 3" in err
    y = tmp_path / "c.yaml"
    y.write_text("lora_rank: 4\n  bad: [1,\n")
    assert "c.yaml: YAML syntax error at line" in run_err(capsys, ["glance", "--config", str(y)])
    assert "config file not found" in run_err(capsys, ["glance", "--config", str(tmp_path / "none.json")])


def test_unimplemented_simpletuner_key(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, **{"--tread_config": {"routes": []}, "--use_ema": True})
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "does not implement yet" in err
    make_image(tmp_path / "unused.png")  # keep helper import used


def test_lora_with_unexpected_keys_is_named(glance_run, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(glance_run, run)
    f = run / "fast" / "pytorch_lora_weights.safetensors"
    sd = load_file(str(f))
    sd["transformer.transformer_blocks.0.attn.to_zz.lora_A.weight"] = torch.zeros(4, 32)
    save_file(sd, str(f), metadata=read_metadata(f))
    err = run_err(capsys, ["generate", "--run", str(run), "--prompt", "x", "--output", str(tmp_path / "o.png")])
    assert "fast" in err and "1 LoRA keys match no module" in err and "to_zz" in err
    assert not (tmp_path / "o.png").exists()
