"""glance_objective (train/objectives.py): trajectory distillation and rollout on the tiny FLUX.1 transformer, checked
against hand-written Euler steps with separately loaded models, and end to end through `glancetune glance`."""
from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from glancetune.cli import main
from glancetune.families.flux import Flux1
from glancetune.engine.adapters import add_lora
from glancetune.train.objectives import objective

from conftest import run_err, write_configs

SLOW, FAST = [1.0, 0.9, 0.8], [0.6, 0.3]


class FakeTrainer:
    """What an Objective reads from the Trainer: the family, the transformer, dtype, autocast, adapter switching."""

    def __init__(self, transformer):
        self.transformer = self.model = transformer
        self.family, self.dtype, self.active = Flux1(), torch.float32, None
        self.acc = SimpleNamespace(autocast=contextlib.nullcontext)

    def activate(self, name):
        if self.active != name:
            self.transformer.set_adapter(name)
            self.active = name

    def to_device(self, t):
        return t

    def loss(self, x0, text, image, sigmas, noise, guidance):  # the flow loss, written out
        s = float(sigmas[0])
        return torch.nn.functional.mse_loss(v(self.model, (1 - s) * x0 + s * noise, s, SimpleNamespace(
            text=text, image=image)), noise - x0)


def load_transformer(model):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(model, subfolder="transformer").eval()


@pytest.fixture(scope="module")
def setup(tiny_flux):
    """The tiny transformer with slow + fast adapters whose lora_B are random (so adapters change the output),
    a plain copy without adapters (the base model, loaded separately), and inputs."""
    tr = load_transformer(tiny_flux)
    for i, name in enumerate(("slow", "fast")):
        add_lora(tr, name, rank=4, alpha=4, dropout=0.0, init="gaussian", targets=list(Flux1.default_lora_targets),
                 seed=i)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    n_img, n_txt = 16, 8
    text = {"encoder_hidden_states": torch.randn(1, n_txt, 32, generator=gen),
            "pooled_projections": torch.randn(1, 32, generator=gen), "txt_ids": torch.zeros(n_txt, 3)}
    image = {"img_ids": torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                                   indexing="ij"), -1).reshape(-1, 3)}
    x0 = torch.randn(1, n_img, 64, generator=gen)
    noise = torch.randn(1, n_img, 64, generator=gen)
    return SimpleNamespace(tr=tr, base=load_transformer(tiny_flux), text=text, image=image, x0=x0, noise=noise)


def v(model, x, s, st):
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([s]), guidance=torch.tensor([1.0]), return_dict=False,
                     **st.text, **st.image)[0]


def test_next_sigma_walks_the_ladder():
    obj = objective("trajectory", SLOW, FAST)
    got = obj.next_sigma(torch.tensor([1.0, 0.8, 0.6, 0.3]))
    assert got.tolist() == pytest.approx([0.9, 0.6, 0.3, 0.0])


@pytest.mark.parametrize("substeps", [1, 2])
def test_trajectory_target_is_the_base_models_own_euler_solution(setup, substeps):
    st, trainer = setup, FakeTrainer(setup.tr)
    trainer.activate("fast")
    obj = objective("trajectory", SLOW, FAST, substeps=substeps)
    s, s_next = 0.6, 0.3
    x_s = 0.4 * st.x0 + 0.6 * st.noise
    got = obj.trajectory_target(trainer, x_s, torch.tensor([s]), torch.tensor([s_next]), st.text, st.image, 1.0)
    # by hand, with the separately loaded base model (no adapters at all)
    x, grid = x_s, [s + (s_next - s) * k / substeps for k in range(substeps + 1)]
    for a, b in zip(grid, grid[1:]):
        x = x + (b - a) * v(st.base, x, a, st)
    want = (x - x_s) / (s_next - s)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if substeps == 1:  # one sub-step: the target is the base model's velocity at x_s
        torch.testing.assert_close(got, v(st.base, x_s, s, st), atol=1e-5, rtol=1e-5)
    # the adapters were really off for the target, and the stepping phase's adapter is back on afterwards
    assert not torch.allclose(v(st.tr, x_s, s, st), v(st.base, x_s, s, st), atol=1e-3)
    assert st.tr.active_adapters() == ["fast"]


def test_trajectory_loss_is_mse_to_that_target(setup):
    st, trainer = setup, FakeTrainer(setup.tr)
    trainer.activate("slow")
    obj = objective("trajectory", SLOW, FAST, substeps=2)
    ph = SimpleNamespace(name="slow", generator=torch.Generator().manual_seed(0))
    before = ph.generator.get_state()
    loss = obj.loss(trainer, ph, st.x0, st.text, st.image, torch.tensor([0.9]), st.noise, 1.0)
    assert torch.equal(ph.generator.get_state(), before)  # no glance_prompts: nothing drawn
    x_s = 0.1 * st.x0 + 0.9 * st.noise
    target = obj.trajectory_target(trainer, x_s, torch.tensor([0.9]), torch.tensor([0.8]), st.text, st.image, 1.0)
    want = torch.nn.functional.mse_loss(v(st.tr, x_s, 0.9, st), target)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def _rollout_by_hand(st, upto: float):
    """Noise at sigma 1, the slow adapter over the slow sigmas, the fast adapter over the fast sigmas above upto."""
    lad = SLOW + FAST
    x = st.noise.clone()
    for i, (a, b) in enumerate(zip(lad, lad[1:])):
        if a <= upto:
            break
        st.tr.set_adapter("slow" if i < len(SLOW) else "fast")
        x = x + (b - a) * v(st.tr, x, a, st)
    return x


def test_rollout_inputs_come_from_the_chained_sampler(setup):
    st, trainer = setup, FakeTrainer(setup.tr)
    obj = objective("rollout", SLOW, FAST)
    for upto in (0.6, 0.3):
        trainer.active = None
        trainer.activate("fast")
        got = obj.rollout_input(trainer, st.x0, st.noise, torch.tensor([upto]), st.text, st.image, 1.0)
        assert trainer.active == "fast" and st.tr.active_adapters() == ["fast"]  # the phase's adapter is back
        want = _rollout_by_hand(st, upto)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(got, (1 - upto) * st.x0 + upto * st.noise, atol=1e-2)  # not the noised image
    # at the first fast sigma the input depends on the slow adapter only
    trainer.active = None
    trainer.activate("fast")
    first = obj.rollout_input(trainer, st.x0, st.noise, torch.tensor([0.6]), st.text, st.image, 1.0)
    slow_b = [p for n, p in st.tr.named_parameters() if "lora_B.slow" in n]
    fast_b = [p for n, p in st.tr.named_parameters() if "lora_B.fast" in n]
    saved = [p.detach().clone() for p in slow_b + fast_b]
    try:
        with torch.no_grad():
            for p in fast_b:
                p.mul_(2.0)
        same = obj.rollout_input(trainer, st.x0, st.noise, torch.tensor([0.6]), st.text, st.image, 1.0)
        torch.testing.assert_close(same, first)
        with torch.no_grad():
            for p in slow_b:
                p.mul_(2.0)
        moved = obj.rollout_input(trainer, st.x0, st.noise, torch.tensor([0.6]), st.text, st.image, 1.0)
        assert not torch.allclose(moved, first, atol=1e-4)
    finally:
        with torch.no_grad():
            for p, q in zip(slow_b + fast_b, saved):
                p.copy_(q)


def test_rollout_loss_targets_the_training_image(setup):
    st, trainer = setup, FakeTrainer(setup.tr)
    trainer.activate("fast")
    obj = objective("rollout", SLOW, FAST)
    loss = obj.loss(trainer, SimpleNamespace(name="fast"), st.x0, st.text, st.image, torch.tensor([0.3]), st.noise,
                    1.0)
    x_s = _rollout_by_hand(st, 0.3)
    st.tr.set_adapter("fast")
    want = torch.nn.functional.mse_loss(v(st.tr, x_s, 0.3, st), (x_s - st.x0) / 0.3)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def _lora_bytes(run):
    return {ph: (run / ph / "pytorch_lora_weights.safetensors").read_bytes() for ph in ("slow", "fast")}


@pytest.mark.slow
def test_glance_trains_with_each_objective(tiny_flux, tmp_path):
    runs = {}
    for kind in ("flow", "trajectory", "rollout"):
        cfg = write_configs(tmp_path / kind, tiny_flux, resolution=64, steps=2, glance_objective=kind)
        assert main(["glance", "--config", str(cfg)]) == 0
        runs[kind] = _lora_bytes(tmp_path / kind / "output")
        saved = json.loads((tmp_path / kind / "output" / "glancetune_config.json").read_text())
        assert json.dumps(saved).count(kind) >= 1
    assert runs["trajectory"]["slow"] != runs["flow"]["slow"] and runs["trajectory"]["fast"] != runs["flow"]["fast"]
    # rollout changes only the fast phase: the slow phase trains exactly as with the flow loss
    assert runs["rollout"]["slow"] == runs["flow"]["slow"] and runs["rollout"]["fast"] != runs["flow"]["fast"]


def test_objective_needs_glance(tiny_flux, tmp_path, capsys):
    cfg = write_configs(tmp_path, tiny_flux, resolution=64, steps=1, glance_objective="trajectory")
    err = run_err(capsys, ["train", "--config", str(cfg)])
    assert "glance_objective" in err
    cfg = write_configs(tmp_path / "b", tiny_flux, resolution=64, steps=1, glance_objective="bogus")
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert "glance_objective" in err


def test_base_state_is_the_base_models_own_ode_from_noise(setup):
    st, trainer = setup, FakeTrainer(setup.tr)
    trainer.activate("slow")
    obj = objective("trajectory", [0.95, 0.8], FAST, substeps=2)  # first ladder sigma < 1: starts at 1 anyway
    got = obj.base_state(trainer, st.noise, torch.tensor([0.8]), st.text, st.image, 1.0)
    x = st.noise
    for a in (1.0, 0.975, 0.95, 0.875):  # 1 -> 0.95 -> 0.8, two equal sub-steps each
        b = a - (0.025 if a > 0.95 else 0.075)
        x = x + (b - a) * v(st.base, x, a, st)
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)
    assert st.tr.active_adapters() == ["slow"]


def test_trajectory_with_an_extra_prompt_is_data_free(setup):
    """A micro-batch that draws an extra prompt uses its text, the base state from noise and the base target;
    the training image is not read (any x0 gives the same loss)."""
    st, trainer = setup, FakeTrainer(setup.tr)
    trainer.activate("fast")
    gen = torch.Generator().manual_seed(0)
    extra = {**st.text, "encoder_hidden_states": torch.randn(1, 8, 32, generator=gen),
             "pooled_projections": torch.randn(1, 32, generator=gen)}
    obj = objective("trajectory", SLOW, FAST, substeps=1, extra=[extra])
    seed = next(k for k in range(100) if int(torch.randint(2, (1,), generator=torch.Generator().manual_seed(k))))
    ph = SimpleNamespace(name="fast", generator=torch.Generator().manual_seed(seed))
    loss = obj.loss(trainer, ph, st.x0, st.text, st.image, torch.tensor([0.6]), st.noise, 1.0)
    ph.generator.manual_seed(seed)
    other = obj.loss(trainer, ph, st.x0 * 0 + 5, st.text, st.image, torch.tensor([0.6]), st.noise, 1.0)
    assert float(loss) == float(other)
    xst = SimpleNamespace(text=extra, image=st.image)
    x = st.noise
    for a, b in ((1.0, 0.9), (0.9, 0.8), (0.8, 0.6)):
        x = x + (b - a) * v(st.base, x, a, xst)
    target = v(st.base, x, 0.6, xst)  # one sub-step: the base velocity
    want = torch.nn.functional.mse_loss(v(st.tr, x, 0.6, xst), target)
    assert float(loss) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.slow
def test_glance_prompts_train_and_need_trajectory(tiny_flux, tmp_path, capsys):
    cfgs = {}
    for name, extra in (("plain", {}), ("extra", {"glance_prompts": ["a blue square", "a green circle"]})):
        cfgs[name] = write_configs(tmp_path / name, tiny_flux, resolution=64, steps=3,
                                   glance_objective="trajectory", **extra)
        assert main(["glance", "--config", str(cfgs[name])]) == 0
    a, b = _lora_bytes(tmp_path / "plain" / "output"), _lora_bytes(tmp_path / "extra" / "output")
    assert a["slow"] != b["slow"] or a["fast"] != b["fast"]
    cfg = write_configs(tmp_path / "bad", tiny_flux, resolution=64, steps=1, glance_prompts=["a blue square"])
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert err.startswith("error: glance_prompts:") and "trajectory" in err


def test_prior_adds_the_base_prediction_loss_on_an_extra_prompt(setup):
    st, trainer = setup, FakeTrainer(setup.tr)
    trainer.activate("slow")
    gen = torch.Generator().manual_seed(1)
    extra = [{**st.text, "encoder_hidden_states": torch.randn(1, 8, 32, generator=gen)} for _ in range(3)]
    obj = objective("flow", SLOW, FAST, substeps=1, extra=extra, prior_weight=0.5)
    ph = SimpleNamespace(name="slow", generator=torch.Generator().manual_seed(3))
    j = int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(3)))
    loss = obj.loss(trainer, ph, st.x0, st.text, st.image, torch.tensor([0.9]), st.noise, 1.0)
    xst = SimpleNamespace(text=extra[j], image=st.image)
    x_s = st.noise + (0.9 - 1.0) * v(st.base, st.noise, 1.0, xst)  # the base state at 0.9 (one sub-step)
    prior = torch.nn.functional.mse_loss(v(st.tr, x_s, 0.9, xst), v(st.base, x_s, 0.9, xst))
    flow = trainer.loss(st.x0, st.text, st.image, torch.tensor([0.9]), st.noise, 1.0)
    assert float(prior) > 0
    assert float(loss) == pytest.approx(float(flow) + 0.5 * float(prior), rel=1e-5)
    with pytest.raises(Exception, match="glance_prior_weight"):
        objective("trajectory", SLOW, FAST, extra=extra, prior_weight=0.5)
    with pytest.raises(Exception, match="glance_prior_weight"):
        objective("rollout", SLOW, FAST, prior_weight=0.5)


@pytest.mark.slow
def test_glance_trains_with_the_prior(tiny_flux, tmp_path, capsys):
    flow = write_configs(tmp_path / "flow", tiny_flux, resolution=64, steps=2)
    assert main(["glance", "--config", str(flow)]) == 0
    prior = write_configs(tmp_path / "prior", tiny_flux, resolution=64, steps=2, glance_prior_weight=1.0,
                          glance_prompts=["a blue square"])
    assert main(["glance", "--config", str(prior)]) == 0
    a, b = _lora_bytes(tmp_path / "flow" / "output"), _lora_bytes(tmp_path / "prior" / "output")
    assert a["slow"] != b["slow"] and a["fast"] != b["fast"]
    bad = write_configs(tmp_path / "bad", tiny_flux, resolution=64, steps=1, glance_prior_weight=1.0)
    assert run_err(capsys, ["glance", "--config", str(bad)]).startswith("error: glance_prior_weight:")
    bad = write_configs(tmp_path / "bad2", tiny_flux, resolution=64, steps=1, glance_prior_weight=1.0,
                        glance_objective="trajectory", glance_prompts=["a blue square"])
    assert run_err(capsys, ["glance", "--config", str(bad)]).startswith("error: glance_prior_weight:")
