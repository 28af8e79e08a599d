"""Nothing surprises a user at start-up: a damaged newest checkpoint is skipped (one line) for the newest whole
one; server start-up arguments are one line each, exit 2; a boolean is never read as a number; `--version`; a
second config file beside the one used is named."""
import json
import socket

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.config.schema import TrainConfig, build_config
from glancetune.config.numbers import takes_number
from glancetune.errors import GlanceError
from glancetune.export.files import WEIGHT_NAME


def corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "state corrupted": lambda c: corrupt(c / "training_state.pt"),
    "LoRA deleted": lambda c: (c / "slow" / WEIGHT_NAME).unlink(),
    "LoRA truncated": lambda c: (c / "fast" / WEIGHT_NAME).write_bytes((c / "fast" / WEIGHT_NAME).read_bytes()[:-100]),
    "manifest missing": lambda c: (c / "checkpoint.json").unlink(),
    "manifest unreadable": lambda c: (c / "checkpoint.json").write_text("{not json"),
}
WHY = {"state corrupted": "training_state.pt changed", "LoRA deleted": f"slow/{WEIGHT_NAME} missing",
       "LoRA truncated": f"fast/{WEIGHT_NAME} is", "manifest missing": "no checkpoint.json",
       "manifest unreadable": "checkpoint.json unreadable"}


@pytest.fixture(scope="module")
def reference(tiny_flux, tmp_path_factory):
    """The uninterrupted 8-step run (checkpoints every 2 steps)."""
    root = tmp_path_factory.mktemp("ref")
    cfg = write_configs(root, tiny_flux, steps=8, checkpointing_steps=2, checkpoints_total_limit=None)
    assert main(["glance", "--config", str(cfg)]) == 0
    return {r: load_file(str(root / "output" / r / WEIGHT_NAME)) for r in ("slow", "fast")}


def six_steps(tiny_flux, root):
    """A finished 6-step run with checkpoints at steps 2 and 4 (none at the end); its config resumes it to 8."""
    cfg = write_configs(root, tiny_flux, steps=6, checkpointing_steps=2, checkpoints_total_limit=None)
    assert main(["glance", "--config", str(cfg)]) == 0
    return cfg, ["--set", "max_train_steps=8", "--set", "resume_allow_changes=[max_train_steps]"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_for_the_older_whole_one(reference, tiny_flux, tmp_path, kind,
                                                                        caplog):
    cfg, more = six_steps(tiny_flux, tmp_path)
    DAMAGE[kind](tmp_path / "output" / "checkpoint-4")
    caplog.clear()
    with caplog.at_level("INFO", logger="glancetune"):
        assert main(["glance", "--config", str(cfg), *more]) == 0
    skipped = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and WHY[kind] in skipped[0], skipped
    assert any("resuming from" in r.getMessage() and "checkpoint-2 (step 2 of 8)" in r.getMessage()
               for r in caplog.records)
    for role in ("slow", "fast"):  # resumed from step 2: equal to the uninterrupted 8-step run
        got = load_file(str(tmp_path / "output" / role / WEIGHT_NAME))
        assert all(torch.equal(got[k], reference[role][k]) for k in reference[role]), role


@pytest.mark.slow
def test_no_whole_checkpoint_is_one_line(tiny_flux, tmp_path, capsys):
    cfg, more = six_steps(tiny_flux, tmp_path)
    out = tmp_path / "output"
    corrupt(out / "checkpoint-4" / "training_state.pt")
    (out / "checkpoint-2" / "fast" / WEIGHT_NAME).unlink()
    err = run_err(capsys, ["glance", "--config", str(cfg), *more])
    assert "no whole checkpoint" in err and "checkpoint-4: training_state.pt changed" in err
    assert f"checkpoint-2: fast/{WEIGHT_NAME} missing" in err
    explicit = run_err(capsys, ["glance", "--config", str(cfg), *more, "--set",
                                f"resume_from_checkpoint={out / 'checkpoint-4'}"])
    assert "is not a whole glancetune checkpoint (training_state.pt changed" in explicit
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg), *more, "--dry-run"]) == 2  # refused as the run refuses it
    got = capsys.readouterr()
    assert "checkpoint-4 damaged (training_state.pt changed" in got.out and "no whole checkpoint" in got.err


@pytest.mark.slow
def test_dry_run_refuses_what_the_run_refuses(tiny_flux, tmp_path, capsys):
    """An output_dir holding a different run: the dry-run says so in the run's own words, before any weights."""
    first = write_configs(tmp_path / "a", tiny_flux, steps=2)
    assert main(["glance", "--config", str(first)]) == 0
    other = write_configs(tmp_path / "b", tiny_flux, steps=2, learning_rate=0.01,
                          output_dir=str(tmp_path / "a" / "output"))
    dry = run_err(capsys, ["glance", "--config", str(other), "--dry-run"])
    real = run_err(capsys, ["glance", "--config", str(other)])
    assert dry == real and "output_dir" in dry


@pytest.mark.parametrize("keys,words", [({"report_to": "wandb"}, "report_to: wandb is not installed"),
                                         ({"validation_prompts": "missing-prompts.json"}, "validation_prompts"),
                                         ({"validation_prompt": "a fox", "validation_ladder_file": "no-ladder.json"},
                                          "no-ladder.json")])
def test_dry_run_refuses_trackers_and_files_as_the_run_does(tiny_flux, tmp_path, capsys, keys, words):
    """A tracker that is not installed, a missing prompt file, a missing ladder file: the dry-run refuses each with
    the real run's line (the run refuses them before any weights load, so this costs no model load)."""
    cfg = write_configs(tmp_path, tiny_flux, steps=2, **keys)
    dry = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run"])
    real = run_err(capsys, ["glance", "--config", str(cfg)])
    assert dry == real and words in dry
    assert not (tmp_path / "output").exists()


NUMERIC = sorted(k for k, f in TrainConfig.model_fields.items() if takes_number(f.annotation))


def test_every_numeric_key_refuses_a_boolean():
    assert {"lora_rank", "learning_rate", "max_train_steps", "seed", "flow_custom_timesteps"} <= set(NUMERIC)
    base = {"data_backend_config": "d.json"}
    for key in NUMERIC:
        with pytest.raises(GlanceError, match=f"key '{key}': a number is meant, not a boolean"):
            build_config({**base, key: True}, "c.json")
    with pytest.raises(GlanceError, match="key 'glance_slow_indices': a number is meant"):
        build_config({**base, "glance_slow_indices": [0, True]}, "c.json")
    assert build_config({**base, "gradient_checkpointing": True}, "c.json").gradient_checkpointing is True


def test_bool_for_rank_on_the_command_line(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    err = run_err(capsys, ["glance", "--config", str(cfg), "--set", "lora_rank=true", "--dry-run"])
    assert "key 'lora_rank' (given with --set or as key=value): a number is meant, not a boolean (got True)" in err


def test_version(capsys):
    from glancetune import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"glancetune {__version__}"


def test_a_second_config_file_is_named(tmp_path, monkeypatch, caplog):
    from glancetune.config.schema import find_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text("{}")
    (tmp_path / "config" / "config.toml").write_text("")
    with caplog.at_level("INFO", logger="glancetune"):
        assert str(find_config()) == "config/config.json"
    assert "using config/config.json (config/config.toml also there, not read)" in caplog.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_start_up_arguments_are_one_line(tmp_path, capsys):
    pytest.importorskip("fastapi")
    port = str(free_port())
    runs = ["--runs-dir", str(tmp_path / "runs")]
    (tmp_path / "file").write_text("x")
    cases = [
        (["--host", "999.1.1.1", "--port", port], "--host: '999.1.1.1' is not an address"),
        (["--runs-dir", str(tmp_path / "file"), "--port", port], "--runs-dir:"),
        (["--runs-dir", str(tmp_path / "file" / "sub"), "--port", port], "is a file, not a folder"),
        (["--idle-release", "-5", "--port", port, *runs], "--idle-release: -5.0 must be 0 or more"),
        (["--idle-release", "nan", "--port", port, *runs], "--idle-release: nan"),
        (["--jobs", "0", "--port", port, *runs], "--jobs: 0 must be at least 1"),
        (["--max-upload-mb", "0", "--port", port, *runs], "--max-upload-mb: 0 must be at least 1"),
        (["--port", "70000", *runs], "--port: 70000 is not a port number"),
    ]
    for argv, msg in cases:
        assert msg in run_err(capsys, ["server", *argv]), argv
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        assert f"--port: {taken} on 127.0.0.1 is in use" in run_err(capsys, ["server", "--port", taken, *runs])
    assert not (tmp_path / "runs").exists()  # nothing created by a refused start
