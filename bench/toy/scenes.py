"""The third toy: compositional scenes with an SD3-layout (true-CFG) model, trained here and saved as an ordinary
StableDiffusion3Pipeline folder.

    python bench/toy/scenes.py --out /tmp/toy-scenes [--smoke] [--device cuda] [--base-seconds 240]

Data (made on the fly, 64x64 RGB): one or two shapes (circle / square / triangle) in six colours, two sizes, in
one of the four quadrants (+-3 px jitter, not captioned), over a textured background (plain / stripes / checks /
dots, four ground colours; the texture's phase is not captioned). The caption names everything else, e.g.
"big red circle TL, small blue square BR on grey stripes" (at most 67 characters: the character tokenizers' CLIP
takes 75). The fine textures and edges
are the detail a few-step sampler loses; the uncaptioned jitter and phase keep each caption's distribution wide.

Model: a 16-channel scale-4 AutoencoderKL trained here (64x64 -> 16x16 latents; round-trip PSNR reported), random
tiny CLIP x 2 + T5 with glancetune's character tokenizers (never trained), and an SD3Transformer2DModel of ~30M
parameters (6 joint blocks, width 384, patch 2: 64 image tokens), flow matching with SD3's shift 3 on logit-normal t,
caption dropout 0.1 (the empty caption, which is SD3's default negative prompt, so true CFG helps), bf16 autocast,
AdamW, EMA. Saved with the transformer in bf16. Writes OUT/model, OUT/data (one training image + caption),
OUT/config/glance.json, OUT/prompts.json (held-out captions for eval), OUT/teacher_prompts.json (captions for
distill's glance_prompts, disjoint from the held-out ones) and OUT/toy_report.json (base-10 vs base-50 PSNR, CFG 1
and CFG 3).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (0.9, 0.12, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.88, 0.1), "white": (0.97, 0.97, 0.97), "pink": (0.85, 0.15, 0.8)}
SIZES = {"small": 7.0, "big": 12.0}
PLACES = {"TL": (16, 16), "TR": (16, 48), "BL": (48, 16), "BR": (48, 48)}  # top / bottom, left / right quadrant
GROUNDS = {"grey": (0.45, 0.45, 0.45), "navy": (0.08, 0.1, 0.3), "olive": (0.4, 0.42, 0.12),
           "beige": (0.85, 0.8, 0.65)}
TEXTURES = ("plain", "stripes", "checks", "dots")
MAX_SEQ = 80
FULL = dict(vae_steps=1500, vae_channels=(64, 128, 128), batch=128, layers=6, heads=6, head_dim=64,
            base_seconds=240.0, lr=3e-4, measure=64)
CPU = dict(vae_steps=300, vae_channels=(32, 32, 64), batch=32, layers=2, heads=4, head_dim=32, base_seconds=600.0,
           lr=1e-3, measure=16)  # trainable on a 2-core CPU in ~12 min (no GPU lent)
SMOKE = dict(vae_steps=2, vae_channels=(64, 128, 128), batch=4, layers=1, heads=2, head_dim=16, base_seconds=5.0,
             lr=1e-3, measure=2)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)


def scene(gen: torch.Generator) -> dict:
    """One random scene description (its caption names all but the jitter and the texture's phase)."""
    def pick(seq):
        return list(seq)[int(torch.randint(len(seq), (1,), generator=gen))]

    places = list(PLACES)
    first = pick(places)
    objs = [first] + ([pick([p for p in places if p != first])] if torch.rand(1, generator=gen) < 0.5 else [])
    return {"objects": [(pick(SIZES), pick(COLOURS), pick(SHAPES), p) for p in objs], "ground": pick(GROUNDS),
            "texture": pick(TEXTURES)}


def caption(s: dict) -> str:
    objs = ", ".join(f"{size} {colour} {shape} {place}" for size, colour, shape, place in s["objects"])
    return f"{objs} on {s['ground']} {s['texture']}"


def render(s: dict, gen: torch.Generator) -> torch.Tensor:
    """[3, 64, 64] in [-1, 1]."""
    y, x = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                          indexing="ij")
    ground = torch.tensor(GROUNDS[s["ground"]])[:, None, None]
    ph = float(torch.randint(8, (1,), generator=gen))
    pattern = {"plain": torch.zeros_like(x), "stripes": ((y + ph) % 6 < 3).float(),
               "checks": ((((x + ph) // 8) + ((y + ph) // 8)) % 2).float(),
               "dots": ((((x + ph) % 8) - 4) ** 2 + (((y + ph) % 8) - 4) ** 2 < 4).float()}[s["texture"]]
    img = ground * (1 - 0.35 * pattern) + 0.35 * pattern * (1 - ground)
    for size, colour, shape, place in s["objects"]:
        cy, cx = (v + float(torch.randint(-3, 4, (1,), generator=gen)) for v in PLACES[place])
        r = SIZES[size]
        if shape == "circle":
            mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        elif shape == "square":
            mask = ((x - cx).abs() <= r * 0.85) & ((y - cy).abs() <= r * 0.85)
        else:
            mask = (y - cy <= r * 0.8) & (y - cy >= -r) & ((x - cx).abs() <= (y - cy + r) * 0.6)
        img = torch.where(mask[None], torch.tensor(COLOURS[colour])[:, None, None], img)
    return img * 2 - 1


def batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    scenes = [scene(gen) for _ in range(n)]
    return torch.stack([render(s, gen) for s in scenes]), [caption(s) for s in scenes]


def build(p: dict, seed: int):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from glancetune.families.tiny_parts import clip_tokenizer, t5_tokenizer

    ct, ct2, tt = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    clip_cfg = dict(vocab_size=len(ct), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_hidden_layers=2, projection_dim=32, max_position_embeddings=77, bos_token_id=0,
                    eos_token_id=1, pad_token_id=1)
    clip1, clip2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg)), CLIPTextModelWithProjection(
        CLIPTextConfig(**clip_cfg))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tt), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=tuple(p["vae_channels"]),
                        layers_per_block=1, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
                        use_post_quant_conv=False, mid_block_add_attention=False)
    w = p["heads"] * p["head_dim"]
    tr = SD3Transformer2DModel(sample_size=SIZE // 4, patch_size=2, in_channels=16, num_layers=p["layers"],
                               attention_head_dim=p["head_dim"], num_attention_heads=p["heads"],
                               caption_projection_dim=w, joint_attention_dim=64, pooled_projection_dim=64,
                               out_channels=16, pos_embed_max_size=32)
    return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=vae,
                                    text_encoder=clip1, tokenizer=ct, text_encoder_2=clip2, tokenizer_2=ct2,
                                    text_encoder_3=t5, tokenizer_3=tt, transformer=tr)


def psnr(a, b):
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def train_vae(pipe, p, device, gen) -> dict:
    vae = pipe.vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for _ in range(p["vae_steps"]):
        px = batch(p["batch"], gen)[0].to(device)
        z = vae.encode(px).latent_dist.mode()
        loss = F.mse_loss(vae.decode(z).sample, px) + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        px = batch(128, gen)[0].to(device)
        z = vae.encode(px).latent_dist.mode()
        vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))
        rec = vae.decode(z).sample.clamp(-1, 1)
    return {"vae_roundtrip_psnr_db": float(psnr(rec, px).mean()), "vae_steps": p["vae_steps"]}


@torch.no_grad()
def encode(pipe, texts, device):
    e, _, pooled, _ = pipe.encode_prompt(texts, None, None, device=device, do_classifier_free_guidance=False,
                                         max_sequence_length=MAX_SEQ)
    return e, pooled


def train_base(pipe, p, device, gen, seed: int) -> dict:
    tr, vae = pipe.transformer.to(device).train(), pipe.vae
    torch.manual_seed(seed)
    ema = [q.detach().clone() for q in tr.parameters()]
    opt = torch.optim.AdamW(tr.parameters(), lr=p["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    empty = encode(pipe, [""], device)
    t0, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < p["base_seconds"]:
        with torch.no_grad():
            px, caps = batch(p["batch"], gen)
            caps = ["" if torch.rand(1, generator=gen) < 0.1 else c for c in caps]
            e, pooled = encode(pipe, caps, device)
            z = vae.encode(px.to(device)).latent_dist.mode()
            x0 = (z - vae.config.shift_factor) * vae.config.scaling_factor
            t = torch.sigmoid(torch.randn(len(caps), generator=gen))
            s = (3.0 * t / (1 + 2.0 * t)).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            xs = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * noise
        with torch.autocast(**amp):
            pred = tr(hidden_states=xs, timestep=s * 1000, encoder_hidden_states=e, pooled_projections=pooled,
                      return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = p["lr"] * min(1.0, (step + 1) / 200)
        opt.step()
        torch._foreach_lerp_(ema, [q.detach() for q in tr.parameters()], 1 - min(0.999, (1 + step) / (10 + step)))
        step += 1
        if step % 200 == 0 or step == 1:
            losses.append((step, round(loss.item(), 5)))
            print(json.dumps({"base_step": step, "loss": losses[-1][1],
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    with torch.no_grad():
        for q, e_ in zip(tr.parameters(), ema):
            q.copy_(e_)
    tr.eval().requires_grad_(False)
    del empty
    return {"base_steps": step, "losses": losses, "transformer_params": sum(q.numel() for q in tr.parameters())}


@torch.no_grad()
def measure(pipe, texts, n: int) -> dict:
    """base-10 vs base-50 PSNR (pixels) at CFG 1 and CFG 3, one seed per caption."""
    out = {}
    for g in (1.0, 3.0):
        imgs = {}
        for steps in (10, 50):
            imgs[steps] = pipe(texts[:n], num_inference_steps=steps, height=SIZE, width=SIZE, guidance_scale=g,
                               generator=[torch.Generator().manual_seed(1000 + k) for k in range(n)],
                               output_type="pt", max_sequence_length=MAX_SEQ).images * 2 - 1
        v = psnr(imgs[10], imgs[50])
        out[f"cfg{g:g}_psnr_base10_to_base50_db"] = [round(float(v.mean()), 3), round(float(v.std()), 3)]
    return out


def write_run_files(out: Path, gen: torch.Generator, glance_steps: int) -> None:
    """One training image + caption, glance.json, held-out eval captions and distill's teacher captions."""
    from PIL import Image

    px, caps = batch(1, torch.Generator().manual_seed(7))
    (out / "data").mkdir(parents=True, exist_ok=True)
    arr = ((px[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    Image.fromarray(arr).save(out / "data" / "toy.png")
    (out / "data" / "toy.txt").write_text(caps[0], encoding="utf-8")
    seen, teacher, held = {caps[0]}, [], {}
    g = torch.Generator().manual_seed(11)
    while len(teacher) < 16 or len(held) < 32:
        c = caption(scene(g))
        if c in seen:
            continue
        seen.add(c)
        if len(teacher) < 16:
            teacher.append(c)
        else:
            held[f"p{len(held):02d}"] = c
    (out / "teacher_prompts.json").write_text(json.dumps(teacher, indent=1))
    (out / "prompts.json").write_text(json.dumps(held, indent=1))
    (out / "config").mkdir(exist_ok=True)
    backend = out / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": SIZE, "shuffle": True,
                                    "image_dir": str(out / "data"), "caption_extension": ".txt"}]))
    cfg = {"model_family": "sd3", "pretrained_model_name_or_path": str(out / "model"),
           "data_backend_config": str(backend), "max_train_steps": glance_steps, "lora_rank": 16,
           "tokenizer_max_length": MAX_SEQ, "output_dir": str(out / "glance"),
           "glance_objective": "flow", "glance_ladder": "glance"}
    (out / "config" / "glance.json").write_text(json.dumps(cfg, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="CPU scale: ~1.5M parameters, ~12 min on 2 cores")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, help="VAE training steps (default: the scale's)")
    ap.add_argument("--base-seconds", type=float)
    ap.add_argument("--glance-steps", type=int, default=60)
    a = ap.parse_args(argv)
    if a.device.startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    p = dict(SMOKE if a.smoke else CPU if a.cpu else FULL)
    if a.base_seconds is not None:
        p["base_seconds"] = a.base_seconds
    if a.vae_steps is not None:  # a shorter VAE fit (a device call's time)
        p["vae_steps"] = a.vae_steps
    device, out, t_all = torch.device(a.device), Path(a.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(a.seed)
    pipe = build(p, a.seed).to(device)
    pipe.set_progress_bar_config(disable=True)
    report = {"device": str(device), "smoke": a.smoke, "params": p}
    t = time.perf_counter()
    report["vae"] = train_vae(pipe, p, device, gen) | {"seconds": round(time.perf_counter() - t, 1)}
    print(json.dumps({"vae": report["vae"]}), flush=True)
    report["base"] = train_base(pipe, p, device, gen, a.seed)
    pipe.to(torch.device("cpu"))
    pipe.transformer.to(torch.bfloat16)
    pipe.save_pretrained(out / "model")
    pipe.transformer.to(torch.float32)
    pipe.to(device)
    write_run_files(out, gen, a.glance_steps)
    texts = list(json.loads((out / "prompts.json").read_text()).values())
    report["measure"] = measure(pipe, texts, min(p["measure"], len(texts)))
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "toy_report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "base"} | {"base_steps": report["base"]["base_steps"],
                                                                          "params_M": report["base"]["transformer_params"] / 1e6}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    sys.exit(main())
