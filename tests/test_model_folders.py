"""Base model folders and references: `glancetune tiny` (bad targets, unknown names), incomplete model folders
(missing, truncated or unreadable weights: one line naming the file, for `generate` and for training), the stock
loader's errors, and hub ids that cannot be fetched (offline, unreachable: fail fast with one line)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from conftest import gen, run_err
from glancetune.errors import GlanceError


# --- tiny -------------------------------------------------------------------------------------------------------------
def test_tiny_onto_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    err = run_err(capsys, ["tiny", "flux", str(tmp_path / "f")])
    assert f"tiny: {tmp_path / 'f'} is a file" in err and (tmp_path / "f").read_text() == "keep"
    err = run_err(capsys, ["tiny", "flux", str(tmp_path / "f" / "sub")])
    assert "tiny: cannot write" in err


def test_tiny_unknown_name_and_full_folder(tmp_path, capsys):
    err = run_err(capsys, ["tiny", "flux3", str(tmp_path / "t")])
    assert "unknown family 'flux3'" in err and "flux2-klein" in err and not (tmp_path / "t").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "already exists and is not empty" in run_err(capsys, ["tiny", "flux", str(tmp_path / "full")])


# --- incomplete model folders -----------------------------------------------------------------------------------------
WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"


def broken_copy(tiny_flux, tmp_path, how) -> Path:
    d = tmp_path / "broken"
    shutil.copytree(tiny_flux, d)
    f = d / WEIGHTS
    data = f.read_bytes()
    if how == "deleted":
        f.unlink()
    elif how == "truncated":
        f.write_bytes(data[:len(data) // 2])
    elif how == "header":
        f.write_bytes(data[:10])
    elif how == "shard":
        f.unlink()
        (d / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    return d


@pytest.mark.parametrize("how, needle", [
    ("deleted", "transformer: no weights file"), ("truncated", "diffusion_pytorch_model.safetensors: truncated ("),
    ("header", "truncated or not a safetensors file"), ("shard", "00001-of-00002.safetensors: missing")])
def test_incomplete_model_folder(glance_run, tiny_flux, tmp_path, capsys, how, needle):
    d = broken_copy(tiny_flux, tmp_path, how)
    err = run_err(capsys, gen(glance_run, tmp_path / "o.png", "--model", str(d)))
    assert str(d) in err and needle in err and "download it again" in err
    assert not (tmp_path / "o.png").exists()


def test_incomplete_model_folder_in_training(tiny_flux, tmp_path, capsys):
    from conftest import write_configs

    d = broken_copy(tiny_flux, tmp_path, "truncated")
    cfg = write_configs(tmp_path / "job", str(d))
    assert "truncated (" in run_err(capsys, ["glance", "--config", str(cfg)])


def test_stock_loader_errors_wrapped_others_not(tiny_flux, tmp_path, monkeypatch):
    from glancetune.families import model_info

    d = broken_copy(tiny_flux, tmp_path, "none")
    (d / WEIGHTS).rename(d / "transformer" / "diffusion_pytorch_model.fp16.safetensors")  # a variant only
    fam = model_info(str(d)).family
    with pytest.raises(GlanceError, match="Error no file named diffusion_pytorch_model") as e:
        fam.load_pipeline(str(d), torch.float32)
    assert str(d) in str(e.value) and "\n" not in str(e.value)
    cls = fam.pipeline_class()

    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(cls, "from_pretrained", boom)
    with pytest.raises(OSError, match="disk on fire"):
        fam.load_pipeline(tiny_flux, torch.float32)


# --- hub ids that cannot be fetched -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["generate", "schedule"])
def test_offline_hub_id_fails_fast(glance_run, tmp_path, capsys, no_load, cmd):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    argv = (gen(glance_run, tmp_path / "o.png", "--model", "nobody/not-a-model") if cmd == "generate"
            else ["schedule", "--model", "nobody/not-a-model"])
    t0 = time.perf_counter()
    err = run_err(capsys, argv)
    assert time.perf_counter() - t0 < 5
    assert "nobody/not-a-model: not a local folder, and not downloaded" in err and "HF_HUB_OFFLINE" in err


def test_unreachable_hub_fails_fast(capsys, monkeypatch):
    from huggingface_hub import constants

    from glancetune.families import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda endpoint: False)
    t0 = time.perf_counter()
    err = run_err(capsys, ["schedule", "--model", "nobody/not-a-model"])
    assert time.perf_counter() - t0 < 5 and "is unreachable" in err and "nobody/not-a-model" in err


def test_offline_hub_id_in_load_pipeline():
    from glancetune.families.flux import Flux1

    t0 = time.perf_counter()
    with pytest.raises(GlanceError, match="^nobody/not-a-model: not downloaded"):
        Flux1().load_pipeline("nobody/not-a-model", torch.float32)
    assert time.perf_counter() - t0 < 30  # no retries (the imports are most of it)


@pytest.mark.parametrize("ref, needle", [("./no/such/model", "no such folder"), ("__FILE__", "a file, not")])
def test_local_looking_refs(capsys, ref, needle):
    ref = __file__ if ref == "__FILE__" else ref
    assert needle in run_err(capsys, ["schedule", "--model", ref])
