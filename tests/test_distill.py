"""glance_objective distill (train/objectives/distill.py, train/teacher.py): the teacher is the stock pipeline's own
guided trajectory, cached; the loss is MSE to the teacher's step on the ladder; every family trains with it; a
killed run resumes bit-exactly; a pair trained so on a true-CFG family samples at CFG 1 (half the passes)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from conftest import PROMPT, run_err, write_configs
from glancetune.cli import main
from glancetune.export.files import WEIGHT_NAME
from glancetune.families.flux import Flux1
from glancetune.train.objectives import objective
from glancetune.train.teacher import TeacherPath, grid

SLOW, FAST = [1.0, 0.9, 0.8], [0.6, 0.3]


class Trainer:
    """What an Objective reads from the Trainer; the model records its inputs and returns a fixed function."""

    def __init__(self, model):
        self.transformer = self.model = model
        self.family, self.dtype, self.active = Flux1(), torch.float32, "slow"
        self.acc = SimpleNamespace(autocast=contextlib.nullcontext)

    def to_device(self, t):
        return t


class Linear(torch.nn.Module):
    """v(x, t, text) = 2 x + t + mean(text): enough to check which state, sigma and prompt each call gets."""

    config = SimpleNamespace(guidance_embeds=False)

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False, **kw):
        t = timestep.view(-1, 1, 1)
        return (2 * hidden_states + t + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1),)


def paths():
    gen = torch.Generator().manual_seed(0)
    n = len(SLOW + FAST) + 1
    out = []
    for j in range(3):
        text = {"encoder_hidden_states": torch.randn(1, 4, 8, generator=gen), "pooled_projections": torch.zeros(1, 8),
                "txt_ids": torch.zeros(4, 3)}
        neg = {**text, "encoder_hidden_states": torch.randn(1, 4, 8, generator=gen)}
        out.append(TeacherPath(f"p{j}", text, neg, (32, 32), 0, torch.randn(n, 1, 16, 64, generator=gen)))
    return out


@pytest.mark.parametrize("cfg_scale,cfg_phases", [(None, ()), (3.0, ("slow",)), (3.0, ("slow", "fast"))])
def test_distill_loss_is_mse_to_the_teachers_step(cfg_scale, cfg_phases):
    tps = paths()
    obj = objective("distill", SLOW, FAST, extra=tps, cfg_scale=cfg_scale, cfg_phases=cfg_phases)
    tr = Trainer(Linear())
    image = {"img_ids": torch.zeros(16, 3)}
    for name, sig in (("slow", [0.9, 1.0]), ("fast", [0.3, 0.6])):
        ph = SimpleNamespace(name=name, generator=torch.Generator().manual_seed(5))
        j = int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(5)))  # the trajectory it draws
        x0 = torch.full((2, 16, 64), 7.0)  # never read
        loss = obj.loss(tr, ph, x0, None, image, torch.tensor(sig), None, None)
        p, lad = tps[j], SLOW + FAST + [0.0]
        want = []
        for s in sig:
            i = lad.index(s)
            x, nxt = p.states[i], p.states[i + 1]
            target = (nxt - x) / (lad[i + 1] - s)
            c = 2 * x + s + p.text["encoder_hidden_states"].mean()
            if name in cfg_phases:
                u = 2 * x + s + p.negative["encoder_hidden_states"].mean()
                target = u + (target - u) / cfg_scale
            want.append(((c - target) ** 2).mean())
        assert float(loss) == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)


def test_teacher_grid_holds_the_ladder():
    g = grid(SLOW + FAST, 4)
    assert len(g) == 20 and g[::4] == SLOW + FAST
    assert all(a > b for a, b in zip(g, g[1:])) and g[-1] == pytest.approx(0.3 * 0.25)


def distill_cfg(root: Path, model: str, family: str = "flux", steps: int = 2, **extra) -> Path:
    keys = {"glance_objective": "distill", "glance_trajectory_substeps": 2, "cache_dir": str(root.parent / "cache"),
            "--model_family": family, **extra}
    if keys["glance_objective"] == "distill":
        keys.setdefault("glance_teacher_seeds", 1)
    return write_configs(root, model, resolution=64, steps=steps, **keys)


def teacher_entries(cache: Path) -> list[tuple[dict, torch.Tensor]]:
    out = []
    for f in sorted((cache / "teacher").glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            out.append((json.loads(sf.metadata()["glancetune.inputs"]), sf.get_tensor("t:states")))
    return out


def test_teacher_is_the_stock_pipelines_trajectory_and_is_cached(tiny_flux, tmp_path, caplog):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    cfg = distill_cfg(tmp_path / "a", tiny_flux, glance_prompts=["a blue square"], glance_teacher_seeds=2)
    with caplog.at_level("INFO", logger="glancetune"):
        assert main(["glance", "--config", str(cfg)]) == 0
    assert "teacher: 4 trajectories of 20 steps" in caplog.text  # (caption + prompt) x 2 seeds, 10 x 2 sub-steps
    entries = teacher_entries(tmp_path / "cache")
    assert len(entries) == 4
    desc, states = next((d, s) for d, s in entries if d["prompt"] == PROMPT and d["seed"] == 1)
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    seen = []
    out = pipe(PROMPT, width=64, height=64, sigmas=desc["sigmas"], num_inference_steps=len(desc["sigmas"]),
               generator=torch.Generator().manual_seed(1), output_type="latent", guidance_scale=1.0,
               callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"].clone()) or {},
               callback_on_step_end_tensor_inputs=["latents"]).images
    assert states.shape[0] == 21
    torch.testing.assert_close(states[-1], out.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(states[2], seen[1].float(), atol=1e-5, rtol=0)  # after step 2 = ladder sigma 1
    first = {ph: (tmp_path / "a" / "output" / ph / WEIGHT_NAME).read_bytes() for ph in ("slow", "fast")}
    caplog.clear()
    cfg = distill_cfg(tmp_path / "b", tiny_flux, glance_prompts=["a blue square"], glance_teacher_seeds=2)
    with caplog.at_level("INFO", logger="glancetune"):
        assert main(["glance", "--config", str(cfg)]) == 0
    assert "teacher:" not in caplog.text  # every trajectory read back from the cache
    again = {ph: (tmp_path / "b" / "output" / ph / WEIGHT_NAME).read_bytes() for ph in ("slow", "fast")}
    assert again == first


def test_distill_settings_are_checked_before_loading(tiny_flux, tmp_path, capsys, no_load):
    bad = [({"glance_teacher_seeds": 2}, "glance_teacher_seeds: used by glance_objective distill"),
           ({"glance_objective": "distill", "glance_student_cfg": "slow"}, "glance_student_cfg: slow is for true-CFG"),
           ({"glance_objective": "distill", "glance_prior_weight": 1.0, "glance_prompts": ["x"]},
            "glance_prior_weight:")]
    for i, (keys, msg) in enumerate(bad):
        cfg = write_configs(tmp_path / str(i), tiny_flux, resolution=64, steps=1, **keys)
        assert msg in run_err(capsys, ["glance", "--config", str(cfg)])
    cfg = distill_cfg(tmp_path / "t", tiny_flux)
    assert "distill needs the slow/fast ladder" in run_err(capsys, ["train", "--config", str(cfg)])


def passes(run: Path, spy_forward, cls) -> int:
    from glancetune.sampling.sampler import GlanceSampler, resolve_spec

    sampler = GlanceSampler.from_spec(resolve_spec(run=run), device="cpu")
    seen = spy_forward(cls)
    sampler([PROMPT], seed=0, width=64, height=64, output_type="np")
    n = len(seen)
    seen.restore()
    assert n == sampler.nfe()
    return n


@pytest.mark.slow
def test_a_distilled_true_cfg_pair_samples_at_cfg_one(tmp_path, spy_forward):
    """Qwen-Image (true CFG 5): the flow pair takes 2 passes per step, the distilled pair 1, and with
    glance_student_cfg slow 2 in the slow phase only, both (the default) 2 everywhere; the record says so and
    generate follows it."""
    import diffusers

    model = tmp_path / "qwen"
    assert main(["tiny", "qwen_image", str(model)]) == 0
    cls = diffusers.QwenImageTransformer2DModel
    got = {}
    for name, keys in (("flow", {"glance_objective": "flow"}), ("baked", {"glance_student_cfg": "none"}),
                       ("slow", {"glance_student_cfg": "slow"}), ("both", {})):
        root = tmp_path / name
        cfg = distill_cfg(root, str(model), "qwen_image", **keys)
        assert main(["glance", "--config", str(cfg)]) == 0
        got[name] = passes(root / "output", spy_forward, cls)
        rec = json.loads((root / "output" / "glancetune_config.json").read_text())["record"]
        assert rec.get("cfg_phases") == {"flow": None, "baked": "none", "slow": "slow", "both": "both"}[name]
    assert got == {"flow": 20, "baked": 10, "slow": 15, "both": 20}


@pytest.mark.slow
@pytest.mark.parametrize("name,family", [("sd3", "sd3"), ("flux2-klein", "flux2"), ("flux2-dev", "flux2")])
def test_distill_trains_every_family(name, family, tmp_path):
    model = tmp_path / "model"
    assert main(["tiny", name, str(model)]) == 0
    cfg = distill_cfg(tmp_path / "run", str(model), family, glance_prompts=["a green circle"])
    assert main(["glance", "--config", str(cfg)]) == 0
    assert len(teacher_entries(tmp_path / "cache")) == 2
    for ph in ("slow", "fast"):
        assert (tmp_path / "run" / "output" / ph / WEIGHT_NAME).is_file()


def test_distill_refuses_edit_models(tmp_path, capsys):
    from glancetune.families.models import model_info  # noqa: F401 - the registry is importable without weights
    from glancetune.plan.build import check_objective
    from glancetune.families.registry import FAMILIES
    from glancetune.errors import GlanceError

    cfg = SimpleNamespace(glance_objective="distill", glance_teacher_guidance=None, glance_teacher_seeds=1,
                          glance_student_cfg="none")
    with pytest.raises(GlanceError, match="not built for edit models"):
        check_objective(cfg, FAMILIES["qwen_image_edit"], "glance")


@pytest.mark.slow
def test_distill_resumes_bit_exactly(tiny_flux, tmp_path):
    from test_resume import assert_same, loras, run_cli

    keys = dict(steps=6, checkpointing_steps=2, glance_prompts=["a blue square"])
    ref = distill_cfg(tmp_path / "ref", tiny_flux, **keys)
    assert main(["glance", "--config", str(ref)]) == 0
    cfg = distill_cfg(tmp_path / "run", tiny_flux, **keys)
    r = run_cli("kill-step", 4, ["glance", "--config", str(cfg)])
    assert r.returncode == -9, r.stderr[-2000:]
    assert main(["glance", "--config", str(cfg)]) == 0
    assert_same(loras(tmp_path / "run" / "output", "glance"), loras(tmp_path / "ref" / "output", "glance"))
