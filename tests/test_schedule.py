"""Ladders: the model's own schedule, the seeds' lists, brute-force checks, user lists (parsed, checked, sorted;
bad ones in a config: one line naming the key)."""
import json
import math

import numpy as np
import pytest

from conftest import glance, no_output, run_err, write_configs
from glancetune.cli import main
from glancetune.errors import GlanceError
from glancetune.schedule import (FAST_INDICES, SLOW_INDICES, base_sigmas, cut_ladder, identity_scheduler_config,
                                 parse_sigma_list, schedule_sigmas, timestep)
from glancetune.families.flux import FLUX1_DEV_SCHEDULER
from glancetune.families.qwen_image import QWEN_IMAGE_SCHEDULER

FLUX_NOTES = [1000, 986.9786, 973.2042, 958.6094, 943.1188, 926.6473, 825.7016, 677.9868, 441.1998, 60.5503]
QWEN_SEEDS = [1000, 979.1915, 957.5157, 934.9171, 911.3354, 886.7053, 745.0728, 562.9505, 320.0802, 20.0]


def brute_force(cfg, seq_len, steps=50):
    """Exponential time shift + optional terminal stretch, written out in float64."""
    m = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
    mu = cfg["base_shift"] + m * (seq_len - cfg["base_image_seq_len"])
    t = np.linspace(1.0, 1.0 / steps, steps)
    s = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    if cfg.get("shift_terminal"):
        one_minus = 1 - s
        s = 1 - one_minus / (one_minus[-1] / (1 - cfg["shift_terminal"]))
    return s


def test_flux_dev_ladder_from_model_folder(tiny_flux, capsys):
    assert main(["schedule", "--model", tiny_flux, "--resolution", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_seq_len"] == 4096
    ts = [timestep(s) for s in out["ladder"]["slow"] + out["ladder"]["fast"]]
    # the notes print 4 decimals; float32 sigmas decide the last digit either way
    assert np.max(np.abs(np.array(ts) - FLUX_NOTES)) <= 1.01e-4
    assert out["slow_indices"] == list(SLOW_INDICES) and out["fast_indices"] == list(FAST_INDICES)


def test_qwen_ladder_equals_the_seed_list_exactly():
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    c = QWEN_IMAGE_SCHEDULER
    mu = calculate_shift(4096, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"], c["max_shift"])
    lad = cut_ladder(schedule_sigmas(c, 50, mu, base_sigmas(50)), SLOW_INDICES, FAST_INDICES)
    assert [round(timestep(s), 4) for s in lad.sigmas] == QWEN_SEEDS


@pytest.mark.parametrize("cfg,seq", [(FLUX1_DEV_SCHEDULER, 4096), (FLUX1_DEV_SCHEDULER, 1024),
                                     (QWEN_IMAGE_SCHEDULER, 4096), (QWEN_IMAGE_SCHEDULER, 83 * 83)])
def test_schedule_matches_brute_force(cfg, seq):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(seq, cfg["base_image_seq_len"], cfg["max_image_seq_len"], cfg["base_shift"], cfg["max_shift"])
    ours = np.array(schedule_sigmas(cfg, 50, mu, base_sigmas(50)))
    assert np.max(np.abs(ours - brute_force(cfg, seq))) < 1e-6


def test_qwen_at_1328_gives_other_values():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = QWEN_IMAGE_SCHEDULER
    mu = calculate_shift(83 * 83, 256, 8192, 0.5, 0.9)
    lad = cut_ladder(schedule_sigmas(c, 50, mu, base_sigmas(50)), SLOW_INDICES, FAST_INDICES)
    assert [round(timestep(s), 1) for s in lad.slow] == [1000.0, 981.8, 962.7, 942.6, 921.6]
    assert round(timestep(lad.fast[-1]), 1) == 20.0


def test_identity_scheduler_uses_the_ladder_verbatim():
    from diffusers import FlowMatchEulerDiscreteScheduler

    lad = [float(np.float32(t / 1000)) for t in QWEN_SEEDS]
    for cfg in (FLUX1_DEV_SCHEDULER, QWEN_IMAGE_SCHEDULER):
        s = FlowMatchEulerDiscreteScheduler.from_config(identity_scheduler_config(cfg))
        s.set_timesteps(sigmas=lad, mu=0.9)
        assert s.sigmas.tolist() == lad + [0.0]
        # while the configured scheduler re-shifts the same list (the seeds' recipe bug)
        s2 = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        s2.set_timesteps(sigmas=lad, mu=1.15)
        assert s2.sigmas[:-1].tolist() != lad


def test_parse_timesteps_and_sigmas():
    assert parse_sigma_list("1000,979.1915", "k") == (1.0, float(np.float32(0.9791915)))
    assert parse_sigma_list([0.5, 0.25], "k") == (0.5, 0.25)
    assert parse_sigma_list("20.0", "k") == (float(np.float32(0.02)),)


@pytest.mark.parametrize("value,needle", [("1000,abc", "'abc' is not a number"), ("1000,1200", "outside"),
                                          ("1000,0.5", "mixed scales"), ("", "empty"), ("0.5,-1", "outside")])
def test_bad_timestep_lists_name_the_key(value, needle):
    with pytest.raises(GlanceError) as e:
        parse_sigma_list(value, "flow_custom_timesteps")
    assert "flow_custom_timesteps" in str(e.value) and needle in str(e.value)


def test_qwen_model_folder_prints_the_seed_list(tmp_path, capsys):
    assert main(["tiny", "qwen_image", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert main(["schedule", "--model", str(tmp_path / "q"), "--resolution", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "qwen_image" and out["image_seq_len"] == 4096
    assert [round(timestep(s), 4) for s in out["ladder"]["slow"] + out["ladder"]["fast"]] == QWEN_SEEDS


# --- user timestep lists in a config ----------------------------------------------------------------------------------
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


def test_increasing_timestep_lists_are_sorted_with_a_notice(tiny_flux, tmp_path, caplog):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, glance_slow_timesteps="900,1000,950",
                        glance_fast_timesteps="100,500")
    caplog.set_level("INFO", logger="glancetune")
    assert main(glance(cfg, "--dry-run")) == 0
    assert "glance_slow_timesteps: sorted from high to low noise" in caplog.text
    assert "glance_fast_timesteps: sorted" in caplog.text
