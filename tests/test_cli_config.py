"""Where `train` / `glance` / `cache` find their config (SimpleTuner's places), command-line overrides, and a
config's problems reported all at once; bad keys and values (a key given twice, unknown or mistyped keys, syntax
errors with line and column, a model folder of another family): one line naming the key, exit 2, before any weights
load."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import glance, make_dataset, make_image, run_err, write_configs
from glancetune.cli import main, parse_args
from glancetune.train.commands import load_train_config
from glancetune.config.schema import ACCEPTED_DEFAULTS, NOT_IMPLEMENTED, build_config
from glancetune.errors import GlanceError


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(data))
    elif path.suffix == ".toml":
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
    else:
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in data.items()))
    return path


def load(argv):
    return load_train_config(parse_args(argv))


def test_config_dir_is_found_and_positional_overrides_apply(tiny_flux, tmp_path, monkeypatch, capsys):
    cfg = write_configs(tmp_path, tiny_flux)
    shutil.copyfile(cfg, tmp_path / "config" / "config.json")
    monkeypatch.chdir(tmp_path)
    assert main(["glance", "--dry-run", "lora_rank=8", "--seed=5", "--set", "seed=4", "--flux_lora_target=tiny"]) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out.split("resolved config: ", 1)[1].splitlines()[0])
    assert resolved["lora_rank"] == 8 and resolved["seed"] == 5 and resolved["flux_lora_target"] == "tiny"
    assert "preset tiny" in out


def test_simpletuner_order_json_toml_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "config" / "config.yaml", {"data_backend_config": "d", "seed": 3})
    assert load(["train"]).seed == 3
    write(tmp_path / "config" / "config.toml", {"data_backend_config": "d", "seed": 2})
    assert load(["train"]).seed == 2
    write(tmp_path / "config" / "config.json", {"data_backend_config": "d", "seed": 1})
    assert load(["train"]).seed == 1
    write(tmp_path / "config.json", {"data_backend_config": "d", "seed": 9})  # the current folder is not looked in
    assert load(["cache", "seed=7"]).seed == 7 and load(["glance"]).seed == 1


def test_env_picks_config_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "config" / "config.json", {"data_backend_config": "d", "seed": 1})
    write(tmp_path / "config" / "fox" / "config.yaml", {"data_backend_config": "d", "seed": 4})
    assert load(["train", "--env", "fox"]).seed == 4
    assert load(["train", "--env", "default"]).seed == 1  # SimpleTuner's name for config/ itself
    assert load(["train", "--config", "config/fox/config.yaml", "seed=6"]).seed == 6


def test_nothing_found_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = run_err(capsys, ["glance", "--dry-run"])
    assert "no config file: looked for config/config.json, config/config.toml, config/config.yaml" in err
    assert "--config PATH" in err
    err = run_err(capsys, ["train", "--env", "fox"])
    assert "config/fox/config.json, config/fox/config.toml, config/fox/config.yaml" in err
    err = run_err(capsys, ["train", "--env", "fox", "--config", "c.json"])
    assert "give one of them" in err


def test_override_errors_name_the_item(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "config" / "config.json", {"data_backend_config": "d"})
    assert "override '--dryrun': expected key=value" in run_err(capsys, ["train", "--dryrun"])
    err = run_err(capsys, ["train", "lora_rnak=4"])
    assert "config/config.json: unknown key 'lora_rnak' (given with --set or as key=value) (did you mean 'lora_rank'?)" in err
    with pytest.raises(SystemExit):  # other commands keep argparse's strictness
        parse_args(["schedule", "--model", "m", "seed=1"])


BAD = {"use_ema": True, "lerning_rate": 1e-4, "lora_rank": 0, "--noise_offset": 0.1, "tread_config": {"a": 1},
       "optimizer": "lion", "lr_scheduler": "sine", "max_train_steps": "many", "report_to": "comet",
       "vae_batch_size": 0, "lora_type": "lycoris", "checkpoints_total_limit": 0, "validation_resolution": "big",
       "trian_batch_size": 2}


def test_all_problems_in_one_line():
    with pytest.raises(GlanceError) as e:
        build_config({"data_backend_config": "d", **BAD}, "config.json")
    msg = str(e.value)
    assert msg.startswith("config.json: 14 problems: ") and "\n" not in msg
    for key in BAD:
        assert repr(key) in msg, key
    assert "unknown key 'lerning_rate' (did you mean 'learning_rate'?)" in msg
    assert "key 'use_ema' is a SimpleTuner option glancetune does not implement yet" in msg
    assert "key 'lora_type' is a SimpleTuner option glancetune does not implement yet (remove it, or set " \
           "'standard'; got 'lycoris')" in msg
    assert "key 'max_train_steps': Input should be a valid integer" in msg


def test_one_problem_has_no_count():
    with pytest.raises(GlanceError, match=r"^c: key 'lora_rank': Input should be greater than or equal to 1 "
                                          r"\(got 0\)$"):
        build_config({"data_backend_config": "d", "lora_rank": 0}, "c")


def test_simpletuner_feature_off_defaults_are_accepted():
    simpletuner_defaults = {"lora_type": "standard", "base_model_precision": "no_change",
                            "text_encoder_1_precision": "no_change", "text_encoder_2_precision": "no_change",
                            "quantize_via": "accelerator", "group_offload_type": "block_level",
                            "group_offload_blocks_per_group": 1, "use_ema": False, "enable_group_offload": False,
                            "push_to_hub": False, "hub_model_id": None, "snr_gamma": None, "noise_offset": 0,
                            "report_to": "none", "optimizer": "bnb-adamw8bit", "num_train_epochs": 0,
                            "resume_from_checkpoint": "latest", "checkpointing_steps": 500,
                            "attention_mechanism": "diffusers", "sageattention_usage": "inference"}
    assert set(ACCEPTED_DEFAULTS) <= NOT_IMPLEMENTED
    c = build_config({"data_backend_config": "d", **{f"--{k}": v for k, v in simpletuner_defaults.items()}}, "c")
    assert c.optimizer == "adamw8bit" and c.num_train_epochs is None and c.checkpointing_steps == 500
    for key, value in (("noise_offset", 0.1), ("caption_dropout_probability", 0.1), ("lora_type", "lycoris"),
                       ("attention_mechanism", "sageattention")):
        with pytest.raises(GlanceError, match=f"'{key}' is a SimpleTuner option"):
            build_config({"data_backend_config": "d", key: value}, "c")


def test_new_keys_defaults_and_checks():
    c = build_config({"data_backend_config": "d"}, "c")
    assert (c.optimizer, c.lr_scheduler, c.lr_num_cycles, c.lr_power) == ("adamw", "constant", None, 1.0)
    assert (c.max_train_steps, c.num_train_epochs, c.vae_batch_size) == (None, None, 4)
    assert (c.checkpointing_steps, c.checkpoints_total_limit, c.resume_from_checkpoint) == (100, 3, "latest")
    assert (c.report_to, c.logging_dir, c.logging_steps, c.parallel_phases) == ("none", "logs", 10, False)
    assert c.resume_allow_changes == [] and c.tracker_project_name is None and c.tracker_run_name is None
    for never in ("none", None, "", False):
        assert build_config({"data_backend_config": "d", "resume_from_checkpoint": never},
                            "c").resume_from_checkpoint is None
    c = build_config({"data_backend_config": "d", "resume_allow_changes": ["--max_train_steps", "seed"]}, "c")
    assert c.resume_allow_changes == ["max_train_steps", "seed"]
    with pytest.raises(GlanceError, match="'resume_allow_changes': not config keys: 'max_steps'"):
        build_config({"data_backend_config": "d", "resume_allow_changes": ["max_steps"]}, "c")


def test_help_names_accepted_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["glance", "--help"])
    out = capsys.readouterr().out
    assert "lora_type ('standard' ok)" in out and "--env NAME" in out and "KEY=VALUE" in out
    assert "optimizer (adamw | adamw_bf16 | adamw8bit | prodigy; default 'adamw')" in out


def test_torch_defaults_are_set_unless_the_user_chose(monkeypatch, capsys, tmp_path):
    """expandable segments (measured: same allocated memory, 4.7 GiB less reserved) unless either of torch's
    variables is already set; inductor's cache under GLANCETUNE_HOME unless TORCHINDUCTOR_CACHE_DIR is set."""
    import os

    from glancetune.cli import main
    from glancetune.process import ALLOC_CONF

    argv = ["schedule", "--model", "nobody/not-a-model"]
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLANCETUNE_HOME", str(tmp_path / "home"))
    main(argv)
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == ALLOC_CONF == "expandable_segments:True"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "inductor")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    main(argv)
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "garbage_collection_threshold:0.8")
    main(argv)
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    capsys.readouterr()


# --- bad keys and values: one line naming the key, exit 2, before any weights load ------------------------------------
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


def test_unknown_config_key_suggests(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, **{"--lora_rnak": 8})
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "glance.json" in err and "'--lora_rnak'" in err and "did you mean 'lora_rank'" in err


def test_wrong_type_names_key(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, **{"--max_train_steps": "many"})
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "'max_train_steps'" in err and "'many'" in err


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
