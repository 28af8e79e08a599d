"""Optimizers, LR schedules and step counts: train/optim.py against the real libraries it wraps."""
import importlib

import pytest
import torch
from diffusers.optimization import get_scheduler

from glancetune.config.schema import DEFAULT_TRAIN_STEPS, build_config
from glancetune.errors import GlanceError
from glancetune.train import optim
from glancetune.plan.steps import describe, resolve_train_steps
from glancetune.train.optim import build_lr_scheduler, build_optimizer


def cfg(**kw):
    return build_config({"data_backend_config": "d", **kw}, "c.json")


def lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def one_param_opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


SCHEDULES = [("constant", {}), ("constant_with_warmup", {}), ("linear", {}), ("cosine", {"num_cycles": 0.5}),
             ("cosine_with_restarts", {"num_cycles": 1}), ("polynomial", {"power": 1.0})]


@pytest.mark.parametrize("name,defaults", SCHEDULES)
def test_each_schedule_is_diffusers_get_scheduler(name, defaults):
    warm = 0 if name == "constant" else 3
    ours = lrs(build_lr_scheduler(one_param_opt(), cfg(lr_scheduler=name, lr_warmup_steps=warm), 20), 20)
    ref = lrs(get_scheduler(name, one_param_opt(), num_warmup_steps=warm, num_training_steps=20, **defaults), 20)
    assert ours == pytest.approx(ref, abs=0, rel=1e-12)


def test_schedules_differ_and_knobs_are_passed():
    def curve(name):  # restarts: 2 cycles (with 1 it is cosine's half wave, the same curve)
        extra = {"lr_num_cycles": 2} if name == "cosine_with_restarts" else {}
        return tuple(lrs(build_lr_scheduler(one_param_opt(), cfg(lr_scheduler=name, lr_warmup_steps=3, **extra), 20),
                         20))

    curves = {name: curve(name) for name, _ in SCHEDULES if name != "constant"}
    assert len(set(curves.values())) == len(curves)  # every name gives its own curve
    c = cfg(lr_scheduler="cosine_with_restarts", lr_num_cycles=3, lr_warmup_steps=2)
    ref = get_scheduler("cosine_with_restarts", one_param_opt(), num_warmup_steps=2, num_training_steps=30,
                        num_cycles=3)
    assert lrs(build_lr_scheduler(one_param_opt(), c, 30), 30) == lrs(ref, 30)
    c = cfg(lr_scheduler="polynomial", lr_power=2.0)
    ref = get_scheduler("polynomial", one_param_opt(), num_warmup_steps=0, num_training_steps=10, power=2.0)
    out = lrs(build_lr_scheduler(one_param_opt(), c, 10), 10)
    assert out == lrs(ref, 10) and out != lrs(build_lr_scheduler(one_param_opt(), cfg(lr_scheduler="polynomial"),
                                                                 10), 10)


def test_schedule_config_errors():
    with pytest.raises(GlanceError, match="lr_warmup_steps: 5 warmup steps do nothing with lr_scheduler 'constant'"):
        cfg(lr_warmup_steps=5)
    with pytest.raises(GlanceError, match="lr_num_cycles: cosine_with_restarts needs a whole number"):
        cfg(lr_scheduler="cosine_with_restarts", lr_num_cycles=1.5)
    with pytest.raises(GlanceError, match="'lr_scheduler'.*'sine'"):
        cfg(lr_scheduler="sine")
    with pytest.raises(GlanceError, match="lr_warmup_steps: 60 warmup steps leave nothing of the 60"):
        build_lr_scheduler(one_param_opt(), cfg(lr_scheduler="linear", lr_warmup_steps=60), 60)


def test_adamw_matches_torch_adamw():
    torch.manual_seed(0)
    w0 = torch.randn(4, 3)
    c = cfg(learning_rate=0.01, adam_beta1=0.8, adam_beta2=0.99, adam_weight_decay=0.1, adam_epsilon=1e-6)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    oa = build_optimizer([a], c)
    ob = torch.optim.AdamW([b], lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-6)
    assert type(oa) is torch.optim.AdamW
    for i in range(4):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(i))
        for p, o in ((a, oa), (b, ob)):
            p.grad = g.clone()
            o.step()
    assert torch.equal(a, b) and not torch.equal(a, w0)
    assert torch.equal(oa.state[a]["exp_avg_sq"], ob.state[b]["exp_avg_sq"])


def test_simpletuner_optimizer_names():
    assert cfg(optimizer="bnb-adamw8bit").optimizer == "adamw8bit"
    assert cfg(optimizer="torch-adamw").optimizer == "adamw"
    assert cfg(optimizer="optimi-adamw").optimizer == "adamw_bf16"
    with pytest.raises(GlanceError, match="'optimizer'.*'adamw', 'adamw_bf16', 'adamw8bit' or 'prodigy'"):
        cfg(optimizer="lion")


OPTIONAL = [("adamw_bf16", "optimi", "pip install torch-optimi"), ("adamw8bit", "bitsandbytes",
                                                                   "pip install bitsandbytes"),
            ("prodigy", "prodigyopt", "pip install prodigyopt")]


@pytest.mark.parametrize("name,module,pip", OPTIONAL)
def test_optional_optimizer_missing_is_one_line(name, module, pip, monkeypatch):
    real = importlib.import_module

    def fail(mod, *a, **k):
        if mod.split(".")[0] == module:
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)
        return real(mod, *a, **k)

    monkeypatch.setattr(optim.importlib, "import_module", fail)
    with pytest.raises(GlanceError) as e:
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg(optimizer=name))
    msg = str(e.value)
    assert msg.startswith(f"optimizer: {name!r} needs") and pip in msg and "\n" not in msg


@pytest.mark.parametrize("name,module,pip", OPTIONAL)
def test_optional_optimizer_builds_and_steps(name, module, pip):
    pytest.importorskip(module)
    p = torch.nn.Parameter(torch.ones(64))
    c = cfg(optimizer=name, learning_rate=1.0 if name == "prodigy" else 0.01)
    o = build_optimizer([p], c)
    assert type(o) is optim.optional_class(name)
    for _ in range(3):
        p.grad = torch.full_like(p, 0.5)
        o.step()
    g = o.param_groups[0]
    assert not torch.equal(p.detach(), torch.ones(64))
    assert g.get("betas", (g.get("beta1"), g.get("beta2"))) == (0.9, 0.999) and g["weight_decay"] == 0.01


def test_describe_line():
    c = cfg(lr_scheduler="cosine", lr_warmup_steps=10)
    assert describe(c, 60) == ("optimizer adamw lr 0.002 (betas (0.9, 0.999), wd 0.01, eps 1e-08); lr_scheduler "
                               "cosine, warmup 10 of 60 steps, num_cycles 0.5")
    assert describe(cfg(), 60).endswith("; lr_scheduler constant")


@pytest.mark.parametrize("kw,batches,steps,why", [
    ({}, 5, DEFAULT_TRAIN_STEPS, "default"),
    ({"max_train_steps": 7}, 5, 7, "max_train_steps"),
    ({"num_train_epochs": 3}, 5, 15, "num_train_epochs 3 x 5 steps per epoch"),
    ({"num_train_epochs": 3, "gradient_accumulation_steps": 2}, 5, 9, "3 steps per epoch"),  # ceil(5/2)
    ({"num_train_epochs": 3, "max_train_steps": 10}, 5, 10, "max_train_steps 10 ends first"),
    ({"num_train_epochs": 2, "max_train_steps": 100}, 5, 10, "ends before max_train_steps 100"),
    ({"num_train_epochs": 0, "max_train_steps": 8}, 5, 8, "max_train_steps"),  # SimpleTuner's 0 = unset
])
def test_resolve_train_steps(kw, batches, steps, why):
    n, reason = resolve_train_steps(cfg(**kw), batches)
    assert n == steps and why in reason and str(steps) in reason


def test_adamw_bf16_states_follow_bf16_params():
    pytest.importorskip("optimi")
    p = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    o = build_optimizer([p], cfg(optimizer="adamw_bf16"))
    p.grad = torch.full_like(p, 0.5)
    o.step()
    assert {t.dtype for t in o.state[p].values() if torch.is_tensor(t) and t.numel() > 1} == {torch.bfloat16}
