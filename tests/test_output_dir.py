"""The output folder of `glance` / `train`: folders that cannot be used (a file, read-only), another run's folder
(refused naming what differs; --overwrite replaces only our own files), files glancetune did not write (never
deleted), `output_dir: .`, a failure after training (the LoRAs are kept elsewhere), stale temp folders cleaned."""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import glance, make_dataset, run_err, write_configs
from glancetune.cli import main
from glancetune.export.files import WEIGHT_NAME


def test_output_dir_that_cannot_be_a_folder(tiny_flux, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    cfg = write_configs(tmp_path, tiny_flux, output_dir=str(tmp_path / "afile"))
    assert "exists and is not a folder" in run_err(capsys, glance(cfg))
    cfg = write_configs(tmp_path, tiny_flux, output_dir=str(tmp_path / "afile" / "out"))
    assert f"{tmp_path / 'afile'} is a file, not a folder" in run_err(capsys, glance(cfg))


def test_output_dir_on_a_read_only_filesystem(tiny_flux, tmp_path, capsys):
    """/sys is mounted read-only (root included): the folder is refused before anything loads."""
    cfg = write_configs(tmp_path, tiny_flux, output_dir="/sys/glancetune-out")
    assert "output_dir /sys/glancetune-out: /sys is not writable" in run_err(capsys, glance(cfg))


@pytest.mark.slow
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


@pytest.mark.slow
def test_overwrite_replaces_only_our_run(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, steps=2, checkpointing_steps=1)
    assert main(glance(cfg)) == 0
    out = tmp_path / "output"
    assert (out / "checkpoint-1").is_dir()
    err = run_err(capsys, glance(cfg, "--set", "seed=3"))
    assert "config keys differ: seed" in err
    assert main(glance(cfg, "--set", "seed=3", "--set", "max_train_steps=3", "--overwrite")) == 0
    assert json.loads((out / "slow" / "train_log.json").read_text())["steps"] == 3
    assert json.loads((out / "glancetune_config.json").read_text())["run"]["seed"] == 3


def test_output_dir_with_foreign_files(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "notes.txt").write_text("mine")
    assert "holds files glancetune did not write (notes.txt)" in run_err(capsys, ["glance", "--config", str(cfg)])
    assert (tmp_path / "output" / "notes.txt").read_text() == "mine"


def test_foreign_files_are_never_deleted(tiny_flux, tmp_path, capsys):
    out = tmp_path / "output"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "photos").mkdir()
    cfg = write_configs(tmp_path, tiny_flux, steps=2)
    err = run_err(capsys, glance(cfg))
    assert "holds files glancetune did not write (notes.txt, photos/)" in err
    err = run_err(capsys, glance(cfg, "--overwrite"))
    assert "never deleted, not even with --overwrite" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "photos").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "photos"]


@pytest.mark.slow
def test_output_dir_dot_needs_no_rename(tiny_flux, tmp_path, monkeypatch):
    """The folder itself is never renamed (a mount point or `.` works): results are written inside it."""
    make_dataset(tmp_path / "data")
    cfg = write_configs(tmp_path, tiny_flux, steps=2, output_dir=".")
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    assert main(glance(cfg)) == 0
    assert (run / "slow" / WEIGHT_NAME).is_file() and (run / "fast" / WEIGHT_NAME).is_file()


@pytest.mark.slow
def test_failure_after_training_keeps_the_loras(tiny_flux, tmp_path, capsys, monkeypatch):
    from glancetune.train import store

    def disk_full(self, out, states):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.LoraStore, "write_outputs", disk_full)
    cfg = write_configs(tmp_path, tiny_flux, steps=2)
    err = run_err(capsys, glance(cfg))
    assert "could not be written there ([Errno 28] No space left on device); they are in " in err
    rescued = Path(err.rsplit("they are in ", 1)[1])
    for role in ("slow", "fast"):
        assert load_file(str(rescued / role / WEIGHT_NAME))  # loadable LoRA files


@pytest.mark.slow
def test_stale_temp_folders_of_ours_are_cleaned(tiny_flux, tmp_path):
    cfg = write_configs(tmp_path, tiny_flux, steps=2)
    out = tmp_path / "output"
    assert main(glance(cfg)) == 0
    leftovers = [out / ".staging-abc123", out / ".checkpoint-4.tmp-999", out / ".checkpoint-2.old-998",
                 out / ".slow.old-997", tmp_path / ".output.tmp-xyz"]
    for d in leftovers:
        d.mkdir()
        (d / "glancetune_config.json").write_text("{}")
    (out / ".mine").mkdir()  # not a name of ours: kept (and, being foreign, named if we ever had to delete)
    assert main(glance(cfg)) == 0
    assert not any(d.exists() for d in leftovers)
    assert (out / ".mine").is_dir()
