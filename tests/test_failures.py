"""The failure model of train/glance: bad config keys and values, output folders that cannot be used or hold
other files, failures after training, stale temp folders. Each bad input: exit 2, one line naming the culprit,
nothing written."""
import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import make_dataset, run_err, write_configs
from glancetune.cli import main
from glancetune.export.files import WEIGHT_NAME


def glance(cfg, *extra):
    return ["glance", "--config", str(cfg), *extra]


def test_key_given_twice_in_one_file(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    data = json.loads(cfg.read_text())
    data["lora_rank"] = 8  # beside "--lora_rank": 4
    cfg.write_text(json.dumps(data))
    err = run_err(capsys, glance(cfg))
    assert "key 'lora_rank' given twice (as '--lora_rank' and 'lora_rank')" in err
    cfg.write_text(cfg.read_text()[:-1] + ', "seed": 1, "seed": 2}')  # the same spelling twice: json keeps one
    assert "key 'seed' given twice" in run_err(capsys, glance(cfg))
    assert not (tmp_path / "output").exists()


def test_command_line_values_are_named_as_such(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    err = run_err(capsys, glance(cfg, "--set", "lora_rank=0"))
    assert "key 'lora_rank' (given with --set or as key=value)" in err
    err = run_err(capsys, glance(cfg, "lerning_rate=1"))
    assert "unknown key 'lerning_rate' (given with --set or as key=value)" in err


@pytest.mark.parametrize("key,value,named", [
    ("tokenizer_max_length", 4096, "tokenizer_max_length: 4096 is above the 512 text tokens"),
    ("device", "cuda", "device: 'cuda' requested but no CUDA device is available"),
    ("device", "tpu", "device"),
    ("max_train_steps", -3, "max_train_steps"),
    ("learning_rate", "fast", "learning_rate"),
    ("lr_scheduler", "sine", "lr_scheduler"),
    ("optimizer", "sgd", "optimizer"),
    ("resume_allow_changes", ["no_such_key"], "no_such_key"),
    # a key of several types: one problem saying what it may be, not one per type
    ("validation_prompts", 5, "key 'validation_prompts': expected str or dict[str,str] or list[str] (got 5)"),
    ("flow_custom_timesteps", [1, "x"], "key 'flow_custom_timesteps': expected str or list[float] (got [1, 'x'])"),
])
def test_bad_values_before_any_weights_load(tiny_flux, tmp_path, capsys, key, value, named):
    cfg = write_configs(tmp_path, tiny_flux, **{key: value})
    assert named in run_err(capsys, glance(cfg))
    assert not (tmp_path / "output").exists()


def test_conditioning_data_on_a_family_without_conditioning(tiny_flux, tmp_path, capsys):
    make_dataset(tmp_path / "edits")
    make_dataset(tmp_path / "refs")
    backend = tmp_path / "backend.json"
    backend.write_text(json.dumps([
        {"id": "edits", "type": "local", "instance_data_dir": str(tmp_path / "edits"), "caption_strategy": "textfile",
         "resolution": 128, "conditioning_data": "refs"},
        {"id": "refs", "type": "local", "dataset_type": "conditioning", "instance_data_dir": str(tmp_path / "refs"),
         "conditioning_type": "reference_strict"}]))
    cfg = write_configs(tmp_path, tiny_flux, data_backend_config=str(backend))
    assert "conditioning_data: flux does not train on conditioning images" in run_err(capsys, glance(cfg))


def test_output_dir_that_cannot_be_a_folder(tiny_flux, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    cfg = write_configs(tmp_path, tiny_flux, output_dir=str(tmp_path / "afile"))
    assert "exists and is not a folder" in run_err(capsys, glance(cfg))
    cfg = write_configs(tmp_path, tiny_flux, output_dir=str(tmp_path / "afile" / "out"))
    assert f"{tmp_path / 'afile'} is a file, not a folder" in run_err(capsys, glance(cfg))


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


def test_output_dir_dot_needs_no_rename(tiny_flux, tmp_path, monkeypatch):
    """The folder itself is never renamed (a mount point or `.` works): results are written inside it."""
    make_dataset(tmp_path / "data")
    cfg = write_configs(tmp_path, tiny_flux, steps=2, output_dir=".")
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    assert main(glance(cfg)) == 0
    assert (run / "slow" / WEIGHT_NAME).is_file() and (run / "fast" / WEIGHT_NAME).is_file()


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


def test_increasing_timestep_lists_are_sorted_with_a_notice(tiny_flux, tmp_path, caplog):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, glance_slow_timesteps="900,1000,950",
                        glance_fast_timesteps="100,500")
    caplog.set_level("INFO", logger="glancetune")
    assert main(glance(cfg, "--dry-run")) == 0
    assert "glance_slow_timesteps: sorted from high to low noise" in caplog.text
    assert "glance_fast_timesteps: sorted" in caplog.text


def test_caption_longer_than_the_tokenizer_keeps(tiny_flux, tmp_path, caplog):
    make_dataset(tmp_path / "data", caption=" ".join(["gradient"] * 40))
    cfg = write_configs(tmp_path, tiny_flux, steps=1, tokenizer_max_length=16, cache_dir=str(tmp_path / "c"))
    caplog.set_level("INFO", logger="glancetune")
    assert main(["cache", "--config", str(cfg)]) == 0
    line = next(r.getMessage() for r in caplog.records if "tokens longer" in r.getMessage())
    n = int(line.split("caption is ")[1].split()[0])
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_flux, subfolder="tokenizer_2")
    assert n == len(tok(" ".join(["gradient"] * 40)).input_ids) - 16 > 0


def test_output_dir_on_a_read_only_filesystem(tiny_flux, tmp_path, capsys):
    """/sys is mounted read-only (root included): the folder is refused before anything loads."""
    cfg = write_configs(tmp_path, tiny_flux, output_dir="/sys/glancetune-out")
    assert "output_dir /sys/glancetune-out: /sys is not writable" in run_err(capsys, glance(cfg))
