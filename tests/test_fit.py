"""The memory estimate (engine/fit.py) against the measured table it was fitted to (docs/benchmarks.md#memory:
full-size random architectures, 1024², rank 32, batch 1, gradient checkpointing unless said, H100/H200), and the
decisions the plan takes from it: gradient_checkpointing auto, and a run that does not fit refused in one line."""
import json

import pytest

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.config.schema import TrainConfig
from glancetune.engine.adapters import count_trainable, lora_targets
from glancetune.engine.fit import shape_of, train_gib
from glancetune.families import model_info

# the architectures of bench/measure/step_models.py (the hub configs' values)
FLUX1 = dict(_class_name="FluxTransformer2DModel", patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
             attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
             guidance_embeds=True, axes_dims_rope=(16, 56, 56))
QWEN = dict(_class_name="QwenImageTransformer2DModel", patch_size=2, in_channels=64, out_channels=16, num_layers=60,
            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56))
FLUX2 = dict(_class_name="Flux2Transformer2DModel", patch_size=1, in_channels=128, attention_head_dim=128,
             timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6)
KLEIN = dict(FLUX2, num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288,
             guidance_embeds=False)
DEV = dict(FLUX2, num_layers=8, num_single_layers=48, num_attention_heads=48, joint_attention_dim=15360,
           guidance_embeds=True)
ARCH = {"flux1": (FLUX1, "flux", 512), "qwen": (QWEN, "qwen_image", 256), "klein": (KLEIN, "flux2-klein", 512),
        "dev": (DEV, "flux2-dev", 512)}
NF4, I8, A8 = {"base_model_precision": "nf4-bnb"}, {"base_model_precision": "int8-quanto"}, {"optimizer": "adamw8bit"}
# (model, settings, phases held: a whole glance job 2, the bare LoRA step 1, measured GiB allocated)
MEASURED = [("flux1", {}, 2, 26.5), ("flux1", I8, 2, 15.65), ("flux1", NF4, 2, 12.75), ("flux1", {**NF4, **A8}, 2, 11.74),
            ("flux1", {"gradient_checkpointing": False}, 1, 57.4),
            ("flux1", {**NF4, **A8, "gradient_checkpointing": False}, 2, 44.0),
            ("qwen", {}, 1, 43.3), ("qwen", I8, 1, 24.7), ("qwen", NF4, 1, 17.6), ("qwen", {**NF4, **A8}, 2, 17.50),
            ("klein", I8, 1, 11.4), ("dev", I8, 1, 36.2), ("dev", NF4, 1, 27.4), ("dev", {**NF4, **A8}, 1, 26.8),
            ("dev", {**NF4, **A8, "gradient_checkpointing_backend": "unsloth"}, 1, 21.4)]
# missed by more than 15%, kept in sight: klein's whole jobs (14.28 int8, 13.94 nf4 GiB measured) hold ~3-5 GiB the
# model does not explain (estimated 11.2 and 8.5)
MISSED = [("klein", I8, 2, 14.28), ("klein", NF4, 2, 13.94)]


@pytest.fixture(scope="module")
def shapes():
    cfg = TrainConfig.model_construct(lora_rank=32)
    out = {}
    for name, (arch, tiny, text) in ARCH.items():
        targets = lora_targets(model_info(f"tiny:{tiny}").family, cfg)[1]
        out[name] = shape_of(arch, count_trainable(arch, cfg, targets), 1024, 1024, text)
    return out


def estimate(shapes, model, settings, phases):
    return train_gib(shapes[model], {"gradient_checkpointing": True, **settings}, 16, 1, phases)["total"]


@pytest.mark.parametrize("model,settings,phases,measured", MEASURED)
def test_estimate_within_15_percent_of_the_measured_table(shapes, model, settings, phases, measured):
    assert estimate(shapes, model, settings, phases) == pytest.approx(measured, rel=0.15)


@pytest.mark.parametrize("model,settings,phases,measured", MISSED)
def test_known_misses_stay_known(shapes, model, settings, phases, measured):
    assert estimate(shapes, model, settings, phases) < 0.85 * measured  # if this fails, move the row up


# Held out: settings the constants were NOT fitted to, measured afterwards with bench/gpu/fit_check.sh (H100; the
# bare LoRA step, bench/measure/train_step.py; bench/results/memory/fit-check/). FLUX.1 there trains the anchor's 14
# modules. (model, settings, phases, rank, resolution, measured GiB allocated, the bench's own estimate)
ANCHOR_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out",
                  "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"]
OFF = {"gradient_checkpointing": False}
HELD_OUT = [("flux1", {}, 2, 16, 768, 25.39, 25.02), ("qwen", OFF, 1, 32, 512, 55.59, 51.46),
            ("klein", {}, 2, 32, 1024, 20.27, 19.36), ("flux1", {**NF4, **A8}, 2, 64, 1024, 13.75, 13.76),
            ("qwen", I8, 2, 64, 768, 33.24, 33.19), ("klein", {**NF4, **A8, **OFF}, 1, 32, 512, 17.37, 14.90),
            ("flux1", {**I8, **OFF}, 1, 32, 512, 28.32, 24.75),
            ("qwen", {**NF4, **A8, "gradient_checkpointing_backend": "unsloth"}, 1, 32, 1024, 14.27, 16.27),
            ("klein", I8, 1, 16, 768, 10.24, 9.95)]


@pytest.mark.parametrize("model,settings,phases,rank,res,measured,bench", HELD_OUT)
def test_estimate_on_settings_it_was_not_fitted_to(model, settings, phases, rank, res, measured, bench):
    """Other ranks, resolutions, both phases, no checkpointing, unsloth on Qwen-Image: within 15% of the measured
    peak (and the bench's own estimate reproduced here). Without checkpointing the estimate is 7-14% low on all
    three rows: the plan's +10% reserve and 0.5 GiB context cover most, not all, of that."""
    arch, tiny, text = ARCH[model]
    cfg = TrainConfig.model_construct(lora_rank=rank, lora_alpha=rank)
    targets = ANCHOR_TARGETS if model == "flux1" else lora_targets(model_info(f"tiny:{tiny}").family, cfg)[1]
    shape = shape_of(arch, count_trainable(arch, cfg, targets), res, res, text)
    got = train_gib(shape, {"gradient_checkpointing": True, **settings}, 16, 1, phases)["total"]
    assert got == pytest.approx(bench, abs=0.05)
    assert got == pytest.approx(measured, rel=0.15)


def dry(capsys, cfg, *extra):
    capsys.readouterr()
    assert main(["glance", "--config", str(cfg), "--dry-run", *extra]) == 0
    return capsys.readouterr().out


def tiny_parts(tiny_flux, gc: bool):
    cfg = TrainConfig.model_construct(lora_rank=4)
    info = model_info(tiny_flux)
    shape = shape_of(info.transformer_config, count_trainable(info.transformer_config, cfg,
                                                              lora_targets(info.family, cfg)[1]), 128, 128, 512)
    return train_gib(shape, {"gradient_checkpointing": gc}, 32, 1, 2)["total"]


def test_checkpointing_auto_follows_the_budget(tiny_flux, tmp_path, capsys):
    off, on = tiny_parts(tiny_flux, False), tiny_parts(tiny_flux, True)
    assert on < off
    cfg = write_configs(tmp_path, tiny_flux)
    d = json.loads(cfg.read_text())
    d.pop("gradient_checkpointing", None)
    cfg.write_text(json.dumps(d))
    out = dry(capsys, cfg, "--set", "memory_budget_gib=24")
    assert "gradient_checkpointing auto: off" in out and '"gradient_checkpointing": false' in out
    between = 0.5 + 1.1 * (on + off) / 2  # fits with checkpointing, not without
    out = dry(capsys, cfg, "--set", f"memory_budget_gib={between}")
    assert "gradient_checkpointing auto: on" in out and '"gradient_checkpointing": true' in out
    out = dry(capsys, cfg)  # a CPU: no budget, nothing decided but off
    assert '"gradient_checkpointing": false' in out and "memory estimate" not in out


def test_a_run_that_does_not_fit_names_the_cheapest_change(tiny_flux, tmp_path, capsys):
    off, on = tiny_parts(tiny_flux, False), tiny_parts(tiny_flux, True)
    cfg = write_configs(tmp_path, tiny_flux, gradient_checkpointing=False)
    between = 0.5 + 1.1 * (on + off) / 2
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run", "--set", f"memory_budget_gib={between}"])
    assert "memory: the training step needs" in err and "set gradient_checkpointing: true (est." in err
    err = run_err(capsys, ["glance", "--config", str(cfg), "--dry-run", "--set", "memory_budget_gib=0.001"])
    assert "no measured setting fits it" in err


EXAMPLES = {"flux1-dev-16gb": ("flux1", 16), "flux1-dev-24gb": ("flux1", 24), "flux1-dev-48gb": ("flux1", 48),
            "qwen-image-24gb": ("qwen", 24), "qwen-image-48gb": ("qwen", 48), "flux2-klein-9b-24gb": ("klein", 24),
            "flux2-dev-24gb": ("dev", 24)}


def test_each_example_fits_its_card_by_the_estimate(shapes):
    """examples/: the full-size model's estimate (+10% reserve, +0.5 GiB context) under the card in its name,
    except FLUX.2-dev at 24 GB: measured at 21.4 GiB for the bare step, the estimate puts the whole job over 24."""
    from pathlib import Path

    from glancetune.plan.fit import needed

    root = Path(__file__).resolve().parents[1] / "examples"
    got = {}
    for name, (model, card) in EXAMPLES.items():
        cfg = json.loads((root / f"{name}.json").read_text())
        keys = {k: cfg[k] for k in ("base_model_precision", "optimizer", "gradient_checkpointing",
                                    "gradient_checkpointing_backend") if k in cfg}
        got[name] = needed(train_gib(shapes[model], keys, 16, 1, 2)["total"])
        assert (got[name] <= card) == (name != "flux2-dev-24gb"), (name, got[name])
