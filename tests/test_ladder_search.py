"""`glancetune search-ladder` and ladder files: the search on a tiny model (a strictly decreasing ladder closer to the
model's own fine-step result than its default schedule with as many steps), the file format, and `generate
--ladder-file` with LoRAs and without (the base model alone on the ladder, equal to stock diffusers)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import main, run_err
from PIL import Image

from glancetune.ladder import FORMAT, LadderFile

STEPS, FINE, SIZE = 4, 20, 64  # 20: the default 4-step sigmas are not all on the fine grid


@pytest.fixture(scope="module")
def searched(tiny_flux, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "prompts.json").write_text(json.dumps({"fox": "a red fox in the snow", "city": "a city at night"}))
    out = root / "ladder.json"
    assert main(["search-ladder", "--model", tiny_flux, "--steps", str(STEPS), "--width", str(SIZE), "--height",
                 str(SIZE), "--prompts", str(root / "prompts.json"), "--fine-steps", str(FINE), "--output",
                 str(out)]) == 0
    return out


def sampler_for(spec):
    from glancetune.sampling.sampler import GlanceSampler

    return GlanceSampler.from_spec(spec, device="cpu")


@pytest.mark.slow
def test_search_writes_a_decreasing_ladder_closer_to_the_fine_result(searched, tiny_flux):
    from glancetune.families import model_info
    from glancetune.sampling.compare import base_own_schedule
    from glancetune.sampling.sampler import resolve_spec

    d = json.loads(searched.read_text())
    assert d["format"] == FORMAT and d["model"] == tiny_flux and (d["width"], d["height"]) == (SIZE, SIZE)
    s = d["sigmas"]
    assert len(s) == STEPS and all(a > b for a, b in zip(s, s[1:])) and 0 < s[-1] and s[0] <= 1
    info = model_info(tiny_flux)
    fine = info.family.own_schedule(info, SIZE, SIZE, FINE)
    assert set(s) <= set(fine) and s[0] == fine[0]  # chosen among the fine schedule's sigmas, from its start
    assert d["method"]["cost"]["searched"] < d["method"]["cost"]["default"]
    assert d["method"]["transformer_passes"] > 0
    # checked apart from the search's own bookkeeping: sampled through generate's path, on held prompts and seeds
    sampler = sampler_for(resolve_spec(ladder_file=searched))
    errors = {"searched": [], "default": []}
    for prompt, seed in (("a red fox in the snow", 0), ("a city at night", 0)):
        ref = base_own_schedule(sampler, FINE, [prompt], seed, SIZE, SIZE, output_type="latent")
        on_ladder = sampler([prompt], seed, SIZE, SIZE, output_type="latent")
        default = base_own_schedule(sampler, STEPS, [prompt], seed, SIZE, SIZE, output_type="latent")
        errors["searched"].append(float(torch.mean((on_ladder - ref) ** 2)))
        errors["default"].append(float(torch.mean((default - ref) ** 2)))
    assert sum(errors["searched"]) < sum(errors["default"]), errors


@pytest.mark.slow
def test_generate_on_a_ladder_file_without_loras_equals_stock_diffusers(searched, tiny_flux, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    out = tmp_path / "base.png"
    assert main(["generate", "--ladder-file", str(searched), "--prompt", "a red fox", "--seed", "3",
                 "--output", str(out)]) == 0
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False,
                                                                 shift=1.0, shift_terminal=None)
    sigmas = json.loads(searched.read_text())["sigmas"]
    stock = pipe("a red fox", sigmas=sigmas, num_inference_steps=len(sigmas), width=SIZE, height=SIZE,
                 guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(stock))


@pytest.mark.slow
def test_generate_with_loras_samples_the_file_ladder(searched, glance_run, tmp_path, capsys):
    from glancetune.sampling.images import read_parameters

    out = tmp_path / "pair.png"
    capsys.readouterr()
    assert main(["generate", "--run", str(glance_run), "--ladder-file", str(searched), "--ladder-slow-steps", "1",
                 "--prompt", "a red fox", "--output", str(out)]) == 0
    assert f"{STEPS} exact steps (1 slow + {STEPS - 1} fast), {STEPS} transformer passes" in capsys.readouterr().out
    sigmas = json.loads(searched.read_text())["sigmas"]
    assert read_parameters(out)["ladder"] == {"slow": sigmas[:1], "fast": sigmas[1:]}


def test_ladder_file_round_trip_and_split(tmp_path):
    f = LadderFile((1.0, 0.8, 0.5, 0.2, 0.1), "tiny:flux", "flux", 64, 64, 1.0, {"how": "test"})
    path = f.write(tmp_path / "sub" / "l.json")
    back = LadderFile.read(path)
    assert back == f
    assert back.ladder().slow == pytest.approx((1.0, 0.8, 0.5)) and back.ladder(2).fast == pytest.approx((0.5, 0.2, 0.1))
    assert not list((tmp_path / "sub").glob(".*tmp*"))


@pytest.mark.parametrize("content,message", [
    ("{", "not a readable JSON file"),
    ('{"format": "other"}', f'not a glancetune ladder file ("format": "{FORMAT}" expected)'),
    (json.dumps({"format": FORMAT, "sigmas": [0.5, 0.8]}), '"sigmas" must be at least 2 numbers in (0, 1]'),
    (json.dumps({"format": FORMAT, "sigmas": [1.0, 0.5]}), "missing or bad field"),
])
def test_bad_ladder_files_are_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    err = run_err(capsys, ["generate", "--ladder-file", str(bad), "--prompt", "x"])
    assert err.startswith(f"error: --ladder-file: {bad}: ") and message in err


def test_bad_search_and_split_arguments_are_one_line(tmp_path, capsys, tiny_flux):
    good = LadderFile((1.0, 0.5, 0.2), tiny_flux, "flux", 64, 64, 1.0).write(tmp_path / "l.json")
    assert run_err(capsys, ["generate", "--ladder-file", str(good), "--ladder-slow-steps", "3", "--prompt", "x"]) == \
        "error: --ladder-slow-steps: 3 is not between 1 and 2 (the ladder has 3 sigmas)"
    assert run_err(capsys, ["generate", "--run", "r", "--ladder-slow-steps", "1", "--prompt", "x"]) == \
        "error: --ladder-slow-steps: only with --ladder-file"
    base = ["search-ladder", "--model", tiny_flux, "--width", "64", "--height", "64", "--output", str(tmp_path / "o")]
    assert run_err(capsys, base + ["--steps", "10", "--fine-steps", "10"]).startswith("error: --fine-steps: 10 must")
    assert run_err(capsys, base + ["--steps", "1"]) == "error: --steps: 1 is below 2"
    odd = ["search-ladder", "--model", tiny_flux, "--width", "70", "--height", "64", "--output", str(tmp_path / "o")]
    assert run_err(capsys, odd) == "error: --width/--height: 70x64 must be multiples of 16"  # before any weights load
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_glance_trains_on_a_ladder_file(tiny_flux, tmp_path, capsys):
    from conftest import write_configs

    from glancetune.export.files import read_record

    lad = LadderFile((1.0, 0.8, 0.6, 0.4, 0.2), tiny_flux, "flux", 64, 64, 1.0).write(tmp_path / "l.json")
    cfg = write_configs(tmp_path / "a", tiny_flux, resolution=128, steps=2, glance_ladder_file=str(lad),
                        glance_ladder_slow_steps=2)
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "phase slow: 2 sigmas 1, 0.8" in out and "phase fast: 3 sigmas 0.6, 0.4, 0.2" in out
    rec = read_record(tmp_path / "a" / "output" / "slow")[0]
    assert rec.ladder.slow == pytest.approx((1.0, 0.8)) and rec.ladder.fast == pytest.approx((0.6, 0.4, 0.2))
    assert rec.ladder == LadderFile.read(lad).ladder(2)  # the record holds exactly what was trained
    both = write_configs(tmp_path / "b", tiny_flux, glance_ladder_file=str(lad), glance_slow_indices="0,1",
                         glance_fast_indices="2,3")
    assert run_err(capsys, ["glance", "--config", str(both), "--dry-run"]) == (
        "error: glance_ladder_file: give it or glance_slow_indices, glance_fast_indices, not both")
    alone = write_configs(tmp_path / "c", tiny_flux, glance_ladder_slow_steps=2)
    assert run_err(capsys, ["glance", "--config", str(alone), "--dry-run"]) == (
        "error: glance_ladder_slow_steps: only with glance_ladder_file or glance_ladder: search")


@pytest.mark.slow
def test_eval_adds_the_searched_ladder_row_and_a_verdict(searched, glance_run, tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps({"fox": "a red fox in the snow"}))
    report = tmp_path / "report"
    capsys.readouterr()
    assert main(["eval", "--run", str(glance_run), "--prompts", str(tmp_path / "p.json"), "--seeds", "2",
                 "--steps-base", "6", "--ladder-file", str(searched), "--output", str(report)]) == 0
    data = json.loads((report / "eval.json").read_text())
    row = f"base-{STEPS}-searched"
    assert row in data["samplers"] and data["samplers"][row]["passes_per_image"] == STEPS  # counted
    assert f"glance_vs_{row}" in data["win_rate"]
    assert data["verdict"] and f"Verdict: {data['verdict']}." in capsys.readouterr().out


@pytest.mark.parametrize("ci,start", [((0.6, 0.9), "the pair beats base-10-searched"),
                                      ((0.1, 0.4), "base-10-searched beats the pair at equal cost"),
                                      ((0.3, 0.7), "no clear difference between the pair and base-10-searched")])
def test_verdict_compares_with_the_best_training_free_row_at_equal_cost(ci, start):
    from glancetune.evaluation.evaluate import verdict

    samplers = {"base-50": {"passes_per_image": 50}, "base-10": {"passes_per_image": 10, "psnr_mean": 20.0},
                "base-10-searched": {"passes_per_image": 10, "psnr_mean": 25.0},
                "base-5": {"passes_per_image": 20, "psnr_mean": 40.0},  # costs more than the pair: not compared
                "glance": {"passes_per_image": 10, "psnr_mean": 24.0}}
    wins = {f"glance_vs_{n}": {"psnr": {"rate": sum(ci) / 2, "ci95": list(ci)}}
            for n in ("base-10", "base-10-searched", "base-5")}
    assert verdict(samplers, wins).startswith(start)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3", "qwen_image", "flux2-klein", "flux2-dev"])
def test_search_on_every_text_to_image_family(name, tmp_path, capsys):
    """True CFG (SD3, Qwen-Image, klein) counts two passes per call; every family's loop layout goes back in."""
    (tmp_path / "p.json").write_text(json.dumps({"fox": "a red fox in the snow"}))
    out = tmp_path / "l.json"
    assert main(["search-ladder", "--model", f"tiny:{name}", "--steps", "3", "--width", "64", "--height", "64",
                 "--prompts", str(tmp_path / "p.json"), "--fine-steps", "8", "--output", str(out)]) == 0
    d = json.loads(out.read_text())
    s, m = d["sigmas"], d["method"]
    assert len(s) == 3 and all(a > b for a, b in zip(s, s[1:]))
    assert m["cost"]["searched"] < m["cost"]["default"]
    per_step = 1 if name == "flux2-dev" else 2  # a guidance embedding, or true CFG: two passes per step
    assert m["transformer_passes"] % per_step == 0 and m["transformer_passes"] > per_step * (8 + 3)


@pytest.mark.slow
def test_the_text_length_is_searched_with_and_sampled_with(tiny_flux, tmp_path):
    """--max-sequence-length: the ladder file records it and `generate --ladder-file` samples with it (a model is
    another teacher at another text length: FLUX's T5 tokens are not masked)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    out = tmp_path / "l.json"
    assert main(["search-ladder", "--model", tiny_flux, "--steps", "3", "--width", "64", "--height", "64",
                 "--fine-steps", "8", "--max-sequence-length", "32", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["max_sequence_length"] == 32
    img = tmp_path / "g.png"
    assert main(["generate", "--ladder-file", str(out), "--prompt", "a red fox", "--output", str(img)]) == 0
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False,
                                                                 shift=1.0, shift_terminal=None)
    sigmas = json.loads(out.read_text())["sigmas"]
    kw = dict(sigmas=sigmas, num_inference_steps=3, width=64, height=64, guidance_scale=1.0, output_type="np")
    at = {n: pipe("a red fox", max_sequence_length=n, generator=torch.Generator("cpu").manual_seed(0), **kw).images[0]
          for n in (32, 512)}
    ours = np.asarray(Image.open(img).convert("RGB")).astype(int)
    assert np.abs(ours - np.round(at[32] * 255)).max() <= 1
    assert np.abs(at[32] - at[512]).max() > 0

