"""`glancetune eval` (evaluate.py): the metrics and the bootstrap on known inputs, and end to end on tiny FLUX.1
and SD3 (true CFG): the report's files, counted transformer passes, its Glance image equal to `generate`'s, and
one-line errors before any weights load."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.evaluation.evaluate import scores, win_rate
from glancetune.sampling.prompts import eval_prompts
from glancetune.sampling.images import read_parameters

PROMPTS = {"fox": "a red fox in the snow", "city": "a city street at night"}


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for fam in ("flux", "sd3"):
        root = tmp_path_factory.mktemp(f"eval-{fam}")
        cfg = write_configs(root, f"tiny:{fam}", resolution=32, steps=3, model_family=fam)
        assert main(["glance", "--config", str(cfg)]) == 0
        (root / "prompts.json").write_text(json.dumps(PROMPTS))
        out[fam] = root
    return out


def test_scores_on_known_images():
    a = Image.new("RGB", (32, 32), (100, 100, 100))
    b = Image.new("RGB", (32, 32), (110, 100, 100))
    s = scores(b, a)
    assert math.isclose(s["psnr"], 10 * math.log10(255 ** 2 / (100 / 3)), rel_tol=1e-9)  # MSE = 10² / 3 channels
    same = scores(a, a)
    assert same["psnr"] == math.inf and same["ssim"] == 1.0


def test_win_rate_and_bootstrap_interval():
    r = win_rate([1, 2, 3, 5], [0, 2, 4, 1])  # win, tie, loss, win
    assert r["rate"] == 0.625 and r["pairs"] == 4
    lo, hi = r["ci95"]
    assert 0 <= lo < 0.625 < hi <= 1
    assert win_rate([1, 2, 3, 5], [0, 2, 4, 1]) == r  # seeded: the same interval every time
    assert win_rate([2, 2], [1, 1]) == {"rate": 1.0, "ci95": [1.0, 1.0], "pairs": 2}


def test_default_prompt_set_is_shipped():
    prompts = eval_prompts(None)
    assert len(prompts) >= 24 and len({p.name for p in prompts}) == len(prompts)


@pytest.mark.slow
@pytest.mark.parametrize("fam,passes", [("flux", [6, 10, 10, 10]), ("sd3", [12, 20, 20, 20])])
def test_eval_report_end_to_end(runs, tmp_path, fam, passes):
    root = runs[fam]
    report = tmp_path / "report"
    argv = ["eval", "--run", str(root / "output"), "--prompts", str(root / "prompts.json"), "--seeds", "2",
            "--seed", "3", "--steps-base", "6", "--output", str(report)]
    assert main(argv) == 0
    data = json.loads((report / "eval.json").read_text())
    names = ["base-6", "base-10", "base-10-ladder", "glance"]
    assert list(data["samplers"]) == names and data["reference"] == "base-6"
    assert [data["samplers"][n]["passes_per_image"] for n in names] == passes  # counted, not computed
    assert data["pairs"] == 4 and data["seeds"] == [3, 4] and len(data["per_pair"]) == 4
    for key in ("glance_vs_base-10", "glance_vs_base-10-ladder"):
        r = data["win_rate"][key]["psnr"]
        assert 0 <= r["ci95"][0] <= r["rate"] <= r["ci95"][1] <= 1
    assert all(0 < p["scores"]["glance"]["ssim"] <= 1 for p in data["per_pair"])
    assert "| glance | " in (report / "eval.md").read_text()
    assert len(list((report / "images").iterdir())) == 16 and (report / "grid.png").is_file()
    # the report's Glance image is generate's image; the base on the same ladder is another one
    gen = tmp_path / "gen.png"
    assert main(["generate", "--run", str(root / "output"), "--prompt", PROMPTS["city"], "--seed", "4",
                 "--output", str(gen)]) == 0
    glance = pixels(report / "images" / "city-4-glance.png")
    assert np.abs(glance - pixels(gen)).max() <= 1
    assert np.abs(glance - pixels(report / "images" / "city-4-base-10-ladder.png")).max() > 0
    assert read_parameters(report / "images" / "city-4-base-6.png")["image"] == "base-6"
    assert main(argv) == 0  # an earlier report is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_eval_bad_input_is_one_line(runs, tmp_path, capsys):
    run = str(runs["flux"] / "output")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    err = run_err(capsys, ["eval", "--run", run, "--output", str(tmp_path / "mine")])
    assert "--output" in err and "not an earlier eval report" in err
    assert "--prompts" in run_err(capsys, ["eval", "--run", run, "--prompts", str(tmp_path / "none.json"),
                                           "--output", str(tmp_path / "r")])
    (tmp_path / "bad.json").write_text('{"a": ""}')
    assert "prompt 'a' is empty" in run_err(capsys, ["eval", "--run", run, "--prompts", str(tmp_path / "bad.json"),
                                                     "--output", str(tmp_path / "r")])
    assert "--seeds" in run_err(capsys, ["eval", "--run", run, "--seeds", "0", "--output", str(tmp_path / "r")])
    err = run_err(capsys, ["eval", "--run", str(tmp_path / "nothing"), "--output", str(tmp_path / "r")])
    assert "--run: " in err and "nothing: no such folder" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIPModel + CLIPProcessor saved as a local folder (test-only; no download)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from glancetune.families.tiny_parts import clip_tokenizer

    tok = clip_tokenizer()
    torch.manual_seed(1)  # a draw whose image and prompt embeddings have positive cosines (the score clamps at 0)
    config = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8), projection_dim=16)
    d = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(config).save_pretrained(d)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                        crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(d)
    return d


@pytest.mark.slow
def test_eval_clip_score_with_a_local_model(runs, tiny_clip, tmp_path):
    """--clip-model: every image's score equals stock transformers' CLIPModel forward on the saved PNG (100 x cosine
    of its normalised image and text embeddings, clamped at 0); means and the win-rate follow from them."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    root = runs["flux"]
    report = tmp_path / "report"
    assert main(["eval", "--run", str(root / "output"), "--prompts", str(root / "prompts.json"), "--seeds", "2",
                 "--steps-base", "4", "--clip-model", str(tiny_clip), "--output", str(report)]) == 0
    data = json.loads((report / "eval.json").read_text())
    assert data["clip_model"] == str(tiny_clip)
    model, proc = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    names = ["base-4", "base-10", "base-10-ladder", "glance"]
    seen = []
    for pair in data["per_pair"]:
        assert list(pair["clip"]) == names
        for n, score in pair["clip"].items():
            with Image.open(report / "images" / f"{pair['prompt']}-{pair['seed']}-{n}.png") as im:
                inputs = proc(text=[PROMPTS[pair["prompt"]]], images=[im.convert("RGB")], return_tensors="pt",
                              padding=True)
            with torch.no_grad():
                out = model(**inputs)
            ref = 100 * max(float(torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)[0]), 0)
            assert math.isclose(score, ref, rel_tol=1e-4, abs_tol=1e-4), (pair, n, score, ref)
            seen.append(score)
    assert len(set(seen)) > 1 and max(seen) > 0  # the score depends on the image (and is not clamped away)
    for n in names:
        assert math.isclose(data["samplers"][n]["clip_score_mean"],
                            float(np.mean([p["clip"][n] for p in data["per_pair"]])), rel_tol=1e-9)
    wins = [1.0 if p["clip"]["glance"] > p["clip"]["base-10"] else 0.5 if p["clip"]["glance"] == p["clip"]["base-10"]
            else 0.0 for p in data["per_pair"]]
    assert data["win_rate"]["glance_vs_base-10"]["clip"]["rate"] == np.mean(wins)
    assert "CLIP score" in (report / "eval.md").read_text()


@pytest.mark.slow
def test_eval_clip_model_errors_before_sampling(runs, tiny_clip, tmp_path, capsys):
    run = str(runs["flux"] / "output")
    argv = ["eval", "--run", run, "--output", str(tmp_path / "r"), "--clip-model"]
    err = run_err(capsys, argv + [str(tmp_path / "none")])
    assert err == f"error: --clip-model: {tmp_path / 'none'}: folder not found"
    other = tmp_path / "t5"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "t5"}')
    assert "model_type is 't5', not 'clip'" in run_err(capsys, argv + [str(other)])
    assert "is a file" in run_err(capsys, argv + [str(tiny_clip / "config.json")])
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_eval_baseline_rows_metrics_and_alarms(runs, tmp_path):
    """--baseline rows load with the stock loader and sample at CFG 1 on their schedule (own / fixed shift); every
    row gets latent MSE and the no-reference alarm; MS-SSIM is null below 161 px; the verdict ignores baselines."""
    import torch
    from diffusers import StableDiffusion3Pipeline

    root = runs["sd3"]
    lora = root / "output" / "fast"
    report = tmp_path / "report"
    assert main(["eval", "--run", str(root / "output"), "--prompts", str(root / "prompts.json"), "--steps-base", "6",
                 "--baseline", f"lightning={lora}:4:3.0", "--baseline", f"turbo={lora / 'pytorch_lora_weights.safetensors'}",
                 "--output", str(report)]) == 0
    data = json.loads((report / "eval.json").read_text())
    names = ["base-6", "base-10", "base-10-ladder", "lightning", "turbo", "glance"]
    assert list(data["samplers"]) == names
    assert [data["samplers"][n]["passes_per_image"] for n in names] == [12, 20, 20, 4, 10, 20]
    pair = data["per_pair"][0]
    assert all(pair["scores"][n]["latent_mse"] >= 0 and pair["scores"][n]["ms_ssim"] is None for n in names[1:])
    assert pair["scores"]["base-10"]["latent_mse"] > 0 and set(pair["quality"]) == set(names)
    assert "lightning" not in data["verdict"] and "| lightning | 4 |" in (report / "eval.md").read_text()
    assert "glance_vs_lightning" in data["win_rate"]
    from glancetune.families.models import model_info

    base = json.loads((root / "output" / "glancetune_config.json").read_text())["record"]["base_model"]
    pipe = StableDiffusion3Pipeline.from_pretrained(model_info(base).path)
    pipe.load_lora_weights(str(lora), adapter_name="lightning")
    pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, "shift": 3.0})
    stock = pipe(PROMPTS["fox"], num_inference_steps=4, width=32, height=32, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    ours = pixels(report / "images" / "fox-0-lightning.png")
    assert np.abs(ours - np.round(stock * 255)).max() <= 1


@pytest.mark.slow
def test_eval_bad_baseline_is_one_line(runs, tmp_path, capsys):
    root = runs["flux"]
    lora = root / "output" / "fast"
    argv = ["eval", "--run", str(root / "output"), "--output", str(tmp_path / "r"), "--baseline"]
    for value, msg in ((f"{lora}", "expected NAME=LORA"), (f"base-4={lora}", "not start with 'base-'"),
                       (f"a={tmp_path / 'none'}", "no LoRA file"), (f"a={lora}:0", "STEPS '0'"),
                       (f"a={lora}:4:-1", "SHIFT '-1'"), (f"a={lora}:4:{tmp_path / 'no.json'}", "no.json")):
        assert msg in run_err(capsys, argv + [value]), value
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_eval_of_a_distilled_pair_adds_the_equal_cost_row(tmp_path):
    """SD3 (true CFG 7): the distilled pair samples in 10 passes, so eval adds base-5 (CFG, 10 passes) and the
    verdict compares the pair with the training-free rows of <= 10 passes."""
    cfg = write_configs(tmp_path, "tiny:sd3", resolution=32, steps=2, model_family="sd3",
                        glance_objective="distill", glance_trajectory_substeps=1,
                        glance_student_cfg="none")
    assert main(["glance", "--config", str(cfg)]) == 0
    (tmp_path / "p.json").write_text(json.dumps(PROMPTS))
    assert main(["eval", "--run", str(tmp_path / "output"), "--prompts", str(tmp_path / "p.json"), "--steps-base",
                 "6", "--output", str(tmp_path / "report")]) == 0
    data = json.loads((tmp_path / "report" / "eval.json").read_text())
    passes = {n: s["passes_per_image"] for n, s in data["samplers"].items()}
    assert passes == {"base-6": 12, "base-10": 20, "base-5": 10, "base-10-ladder": 20, "glance": 10}
    assert "base-5" in data["verdict"]
