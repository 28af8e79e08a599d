"""TREAD token routing (train/tread.py) on the tiny FLUX.1 model (1 double + 1 single block), CPU: a route that
routes nothing gives the plain run's LoRA bytes; the hooks are exact (a route forced to keep every token through
the gather/scatter path gives the plain bytes too); a real route processes fewer tokens in its window during
training steps only, still trains, is the same with and without gradient checkpointing and resumes exactly; the
rotary rows follow the kept tokens; bad routes are one line. FLUX.2 (tiny klein: 1 double + 2 single blocks, whose
single blocks take one [text | image] sequence) and Qwen-Image (2 blocks, rotary (image, text)): the same
exactness, and a window across FLUX.2's double/single boundary routes the image tokens of both block shapes."""
import json
from pathlib import Path

import pytest
import torch

from conftest import run_err, write_configs
from glancetune.cli import main
from glancetune.export.files import WEIGHT_NAME

ROUTE = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -1}]}


def lora_bytes(out: Path) -> dict:
    return {role: (out / role / WEIGHT_NAME).read_bytes() for role in ("slow", "fast")}


def run(root: Path, tiny_flux, steps=3, **keys) -> Path:
    cfg = write_configs(root, tiny_flux, steps=steps, checkpointing_steps=0, learning_rate=5e-3, **keys)
    assert main(["glance", "--config", str(cfg)]) == 0
    return root / "output"


@pytest.fixture(scope="module")
def plain(tiny_flux, tmp_path_factory):
    return run(tmp_path_factory.mktemp("plain"), tiny_flux)


@pytest.mark.slow
def test_a_route_that_routes_nothing_is_no_route(plain, tiny_flux, tmp_path):
    none = {"routes": [{"selection_ratio": 0.0, "start_layer_idx": 0, "end_layer_idx": 1}]}
    assert lora_bytes(run(tmp_path, tiny_flux, tread_config=none)) == lora_bytes(plain)


@pytest.mark.slow
def test_the_routing_hooks_are_exact(plain, tiny_flux, tmp_path, monkeypatch):
    """Every token kept, but through the whole gather / rotary rows / scatter path: the same bytes."""
    from glancetune.engine import tread

    monkeypatch.setattr(tread.Tread, "ids", lambda self, r, n, device: torch.arange(n, device=device))
    assert lora_bytes(run(tmp_path, tiny_flux, tread_config=ROUTE)) == lora_bytes(plain)


@pytest.mark.slow
def test_a_route_processes_fewer_tokens_while_training(plain, tiny_flux, tmp_path, monkeypatch):
    from glancetune.train import job

    seen = []
    orig = job.Job.build_trainer

    def build(self, plan, rt, transformer, *a, **k):
        trainer = orig(self, plan, rt, transformer, *a, **k)
        for name, blocks in (("double", transformer.transformer_blocks),
                             ("single", transformer.single_transformer_blocks)):
            blocks[0].register_forward_pre_hook(
                lambda m, args, kw, name=name: seen.append((name, torch.is_grad_enabled(), (
                    kw["hidden_states"] if "hidden_states" in kw else args[0]).shape[1])), with_kwargs=True)
        return trainer

    monkeypatch.setattr(job.Job, "build_trainer", build)
    out = run(tmp_path, tiny_flux, steps=6, tread_config=ROUTE)
    tokens = (128 // 16) ** 2  # 128x128 image, VAE /8, 2x2 packing: 64 image tokens
    assert {(g, n) for _, g, n in seen} == {(True, tokens // 2), (False, tokens)}  # eval losses are unrouted
    assert lora_bytes(out) != lora_bytes(plain)
    for role in ("slow", "fast"):
        log = json.loads((out / role / "train_log.json").read_text())
        assert log["eval_loss_after"] < log["eval_loss_before"], (role, log)


@pytest.mark.slow
def test_gradient_checkpointing_and_resume_are_exact(tiny_flux, tmp_path):
    whole = run(tmp_path / "whole", tiny_flux, steps=4, tread_config=ROUTE)
    gc = run(tmp_path / "gc", tiny_flux, steps=4, tread_config=ROUTE, gradient_checkpointing=True)
    a, b = lora_bytes(whole), lora_bytes(gc)
    from safetensors.torch import load

    for role in a:
        ta, tb = load(a[role]), load(b[role])
        assert all(torch.allclose(ta[k], tb[k], rtol=0, atol=1e-6) for k in ta)
    # 2 steps with a checkpoint, then the same run extended to 4: resumed, equal to the 4-step run
    cfg = write_configs(tmp_path / "resumed", tiny_flux, steps=2, checkpointing_steps=2, learning_rate=5e-3,
                        tread_config=ROUTE)
    assert main(["glance", "--config", str(cfg)]) == 0
    assert main(["glance", "--config", str(cfg), "max_train_steps=4", "resume_allow_changes=[\"max_train_steps\"]"]) == 0
    assert lora_bytes(tmp_path / "resumed" / "output") == a


def test_rotary_rows_follow_the_kept_tokens(tiny_flux):
    from diffusers import FluxTransformer2DModel

    from glancetune.families import resolve_family

    family = resolve_family("flux", None)[0]
    t = FluxTransformer2DModel.from_pretrained(tiny_flux, subfolder="transformer")
    txt = torch.zeros(5, 3)
    img = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"),
                      -1).reshape(-1, 3)
    keep = torch.tensor([1, 4, 6, 15])
    rows = family.tread_rope_rows(t.pos_embed(torch.cat([txt, img])), 5, keep)
    direct = t.pos_embed(torch.cat([txt, img[keep]]))
    assert all(torch.equal(a, b) for a, b in zip(rows, direct))


@pytest.mark.parametrize("value,expected", [
    ({"routes": [{"selection_ratio": 1.0, "start_layer_idx": 0, "end_layer_idx": 1}]},
     "key 'tread_config': routes[0].selection_ratio is the fraction of tokens routed around, in [0, 1) (got 1.0)"),
    ({"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 2}]},
     "tread_config.routes[0].end_layer_idx: a block index in [-2, 1] for this flux transformer's 2 blocks (got 2)"),
    ({"routes": [{"selection_ratio": 0.5, "start_layer_idx": -1, "end_layer_idx": 0}]},
     "tread_config.routes[0]: start_layer_idx -1 comes after end_layer_idx 0 (blocks 1 > 0)"),
    ({"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 0},
                 {"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 1}]},
     "tread_config: routes overlap (blocks 0-0 and 0-1)"),
    ({"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0}]},
     "key 'tread_config': routes[0] needs exactly selection_ratio, start_layer_idx, end_layer_idx"),
])
def test_bad_routes_are_one_line(tiny_flux, tmp_path, capsys, value, expected):
    cfg = write_configs(tmp_path, tiny_flux, steps=1, tread_config=value)
    err = run_err(capsys, ["glance", "--config", str(cfg)])
    assert expected in err and err.startswith("error: "), err
    assert not (tmp_path / "output").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model,family", [("tiny:flux2-klein", "flux2"), ("tiny:qwen_image", "qwen_image"),
                                          ("tiny:sd3", "sd3")])
def test_routes_of_other_families_are_exact_and_route_their_blocks(tmp_path, monkeypatch, model, family):
    """FLUX.2 klein: a joint double block, then single blocks taking one [text | image] sequence; Qwen-Image: joint
    blocks whose rotary embedding is (image rows, text rows) and whose attention mask is built per block; SD3:
    joint blocks without a rotary embedding, the last returning no text. A route
    keeping every token through the gather / rotary rows / scatter path gives the plain bytes, with and without
    gradient checkpointing; a real route over blocks 0..-2 hands its blocks half the image tokens (the text whole),
    leaves the last block whole, and trains to other bytes."""
    from glancetune.train import job
    from glancetune.engine import tread

    def routed_run(name, **keys):
        cfg = write_configs(tmp_path / name, model, steps=3, checkpointing_steps=0, learning_rate=5e-3,
                            **{"--model_family": family}, **keys)
        assert main(["glance", "--config", str(cfg)]) == 0
        return lora_bytes(tmp_path / name / "output")

    plain = routed_run("plain")
    window = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -2}]}
    with monkeypatch.context() as m:
        m.setattr(tread.Tread, "ids", lambda self, r, n, device: torch.arange(n, device=device))
        assert routed_run("all-kept", tread_config=window) == plain
        assert routed_run("all-kept-gc", tread_config=window, gradient_checkpointing=True) == routed_run(
            "plain-gc", gradient_checkpointing=True)

    seen, orig = [], job.Job.build_trainer

    def build(self, plan, rt, transformer, *a, **k):
        trainer = orig(self, plan, rt, transformer, *a, **k)
        for i, block in enumerate(plan.family.tread_blocks(transformer)):
            block.register_forward_pre_hook(lambda mod, args, kw, i=i: seen.append((i, torch.is_grad_enabled(), (
                kw["hidden_states"] if "hidden_states" in kw else args[0]).shape[1])), with_kwargs=True)
        return trainer

    monkeypatch.setattr(job.Job, "build_trainer", build)
    routed = routed_run("routed", tread_config=window)
    img = (128 // 16) ** 2  # 128x128, VAE /8, 2x2 packing: 64 image tokens
    unrouted = sorted({(i, n) for i, g, n in seen if not g})  # the eval forwards
    n_blocks = len(unrouted)
    if family == "flux2":  # single blocks (after the one double block) see text + image
        text = unrouted[1][1] - img
        assert text > 0 and unrouted == [(0, img)] + [(i, text + img) for i in range(1, n_blocks)]
        expected = {(0, img // 2), *((i, text + img // 2) for i in range(1, n_blocks - 1)), (n_blocks - 1, text + img)}
    else:
        assert unrouted == [(i, img) for i in range(n_blocks)]
        expected = {*((i, img // 2) for i in range(n_blocks - 1)), (n_blocks - 1, img)}
    assert {(i, n) for i, g, n in seen if g} == expected
    assert routed != plain


def test_the_hooks_gather_and_scatter_both_block_shapes():
    """A window over a joint block and a concatenated block of a small stand-in transformer whose blocks add each
    token's rotary row (a distinct value per position): routed-around image tokens skip the window unchanged, kept
    ones get their own rows in both shapes, text tokens always pass, and everything lands back in its place."""
    from glancetune.families.layouts import DoubleSingle
    from glancetune.engine.tread import Route, Tread

    class Joint(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states, image_rotary_emb):
            t = encoder_hidden_states.shape[1]
            return encoder_hidden_states + image_rotary_emb[0][:t], hidden_states + image_rotary_emb[0][t:]

    class Concat(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states, image_rotary_emb):
            assert encoder_hidden_states is None
            return hidden_states + image_rotary_emb[0]

    class Stand(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Joint(), Concat(), Concat()])

        def forward(self, hidden_states, encoder_hidden_states, rope):
            txt, img = self.blocks[0](hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                      image_rotary_emb=rope)
            x = torch.cat([txt, img], 1)
            for block in self.blocks[1:]:
                x = block(hidden_states=x, encoder_hidden_states=None, image_rotary_emb=rope)
            return x

    txt, img = 3, 8
    tag = torch.arange(1.0, txt + img + 1).pow(2)[:, None].expand(-1, 2)  # row k's value: (k+1)^2
    rope = (tag, torch.zeros_like(tag))
    model = Stand()
    Tread([Route(0.5, 0, 1)], list(model.blocks), DoubleSingle().tread_rope_rows).install(model)
    torch.manual_seed(0)
    out = model(hidden_states=torch.zeros(1, img, 2), encoder_hidden_states=torch.zeros(1, txt, 2), rope=rope)
    torch.manual_seed(0)
    kept = torch.randperm(img)[:img - img // 2].sort().values
    expected = tag.clone()  # block 2 (outside the window): every token once
    expected[:txt] += 2 * tag[:txt]  # text: blocks 0 and 1 as well
    expected[txt + kept] += 2 * tag[txt + kept]  # kept image tokens: their own rows in blocks 0 and 1
    assert torch.equal(out[0], expected)
    with torch.no_grad():  # unrouted: every token through every block
        assert torch.equal(model(hidden_states=torch.zeros(1, img, 2), encoder_hidden_states=torch.zeros(1, txt, 2),
                                 rope=rope)[0], 3 * tag)


def test_flux2_rotary_rows_follow_the_kept_tokens():
    from diffusers import Flux2Transformer2DModel

    from glancetune.families import model_info
    from glancetune.families.tiny import resolve_tiny

    info = model_info("tiny:flux2-klein")
    t = Flux2Transformer2DModel.from_pretrained(resolve_tiny("tiny:flux2-klein"), subfolder="transformer")
    txt = torch.stack([torch.zeros(5), torch.zeros(5), torch.zeros(5), torch.arange(5.0)], -1)
    img = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), torch.zeros(1),
                                     indexing="ij"), -1).reshape(-1, 4)
    keep = torch.tensor([0, 3, 7, 12])
    rows = info.family.tread_rope_rows(t.pos_embed(torch.cat([txt, img])), 5, keep)
    direct = t.pos_embed(torch.cat([txt, img[keep]]))
    assert all(torch.equal(a, b) for a, b in zip(rows, direct))


@pytest.mark.slow
def test_routes_under_regional_compile_train_the_same(tiny_flux, tmp_path):
    """The block hooks run inside the compiled blocks (compile_repeated_blocks, fullgraph): the LoRA equals the eager
    routed run's up to float reordering (one phase, `train`, to halve the CPU compile time)."""
    from safetensors.torch import load_file

    out = {}
    for name, keys in (("eager", {}), ("compiled", {"compile_transformer": True})):
        cfg = write_configs(tmp_path / name, tiny_flux, steps=3, learning_rate=5e-3, tread_config=ROUTE,
                            checkpointing_steps=0, **{"--flow_custom_timesteps": "1000,500"}, **keys)
        assert main(["train", "--config", str(cfg)]) == 0
        out[name] = load_file(str(tmp_path / name / "output" / WEIGHT_NAME))
    diff = max(float((out["eager"][k] - out["compiled"][k]).abs().max()) for k in out["eager"])
    assert diff < 1e-5


def test_dry_run_names_the_routed_blocks(tiny_flux, tmp_path, capsys):
    route = {"routes": [{"selection_ratio": 0.25, "start_layer_idx": 0, "end_layer_idx": -2},
                        {"selection_ratio": 0.5, "start_layer_idx": -1, "end_layer_idx": -1}]}
    cfg = write_configs(tmp_path, tiny_flux, steps=1, tread_config=route)
    assert main(["glance", "--config", str(cfg), "--dry-run"]) == 0
    assert ("TREAD (training steps only): 25% of the image tokens around blocks 0-0 of 0-1; 50% of the image "
            "tokens around blocks 1-1 of 0-1") in capsys.readouterr().out


def test_tread_elsewhere_is_one_line():
    """A family without TREAD support (the protocol's default) is refused in one line naming the key."""
    from glancetune.errors import GlanceError
    from glancetune.families.base import Family
    from glancetune.config.tread import parse_routes

    with pytest.raises(GlanceError) as e:
        parse_routes(ROUTE, Family().tread_blocks_count({"num_layers": 2}), "other")
    assert str(e.value) == ("tread_config: TREAD is built for FLUX.1, FLUX.2, SD3, Qwen-Image and Qwen-Image-Edit so "
                            "far, not for other; remove tread_config")


def test_qwen_image_rotary_rows_follow_the_kept_tokens():
    from diffusers import QwenImageTransformer2DModel

    from glancetune.families import model_info
    from glancetune.families.tiny import resolve_tiny

    info = model_info("tiny:qwen_image")
    t = QwenImageTransformer2DModel.from_pretrained(resolve_tiny("tiny:qwen_image"), subfolder="transformer")
    img, txt = t.pos_embed([[(1, 4, 4)]], max_txt_seq_len=5, device=torch.device("cpu"))
    keep = torch.tensor([0, 3, 7, 12])
    rows = info.family.tread_rope_rows((img, txt), 5, keep)
    assert torch.equal(rows[0], img[keep]) and rows[1] is txt and img.shape[0] == 16
