"""A ComfyUI workflow in API format that samples a slow/fast pair: `glancetune export` writes it as
`RUN/comfyui/glance-workflow-api.json` beside the two ComfyUI LoRA copies (comfyui.py).

The graph (node ids are strings, a link is `[node id, output index]`, as ComfyUI's /prompt endpoint takes it):
the family's loaders (diffusion model, text encoder(s), VAE), `LoraLoaderModelOnly` twice on the one base model
(slow, fast), the prompt encoded once, an empty latent of the run's size, two `ManualSigmas` nodes holding the
run's sigmas (slow steps + the split sigma | the split sigma ... fast steps + 0), and two `SamplerCustomAdvanced`:
the first with the slow model and `RandomNoise`, the second with the fast model, `DisableNoise` and the first's
latent (ComfyUI divides a flow latent by 1 - sigma when a sampler ends and multiplies it back when the next one
starts without noise, so the chain continues exactly), then `VAEDecode` and `SaveImage`. Guidance: FLUX.1 and
FLUX.2 dev put the record's value into the conditioning (`FluxGuidance`, `BasicGuider`); the true-CFG families
(FLUX.2 klein, SD3, Qwen-Image) use `CFGGuider` with the family's negative prompt, its cfg per phase as
`generate` samples (a distilled record's `cfg_phases`); Qwen-Image adds `CFGNorm` (pre_cfg), ComfyUI's nearest
form of the diffusers pipeline's norm-rescaled CFG (per latent pixel where diffusers rescales per packed token). Qwen-Image-Edit (Plus) encode the prompt with the control image
(`TextEncodeQwenImageEdit(Plus)`, `LoadImage`).

File names of the base model's parts are placeholders (ComfyUI's usual names; each loader's `_meta.title` says
what to pick). Every node class and input is checked against `comfyui_nodes.json`: ComfyUI's own node
definitions, extracted from its source at the commit named there (`check_workflow`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GlanceError
from ..schedule import Ladder

WORKFLOW_NAME = "glance-workflow-api.json"
SCHEMA_PATH = Path(__file__).with_name("comfyui_nodes.json")
PROMPT = "a fox in the snow"  # the text node's prompt where the run has no caption: the user's to edit


@dataclass(frozen=True)
class WorkflowPlan:
    """What the graph needs from the run: kind (the loaders' table key), ComfyUI's two sigma lists, size,
    guidance and the LoRA files."""

    kind: str  # flux | flux2-dev | flux2-klein | sd3 | qwen_image | qwen_image_edit | qwen_image_edit_plus
    slow_sigmas: tuple[float, ...]  # the slow steps, then the split sigma
    fast_sigmas: tuple[float, ...]  # the split sigma, the fast steps, then 0
    width: int
    height: int
    guidance: float | None  # FLUX.1 / FLUX.2 dev: the embedded guidance
    cfg: tuple[float, float]  # true-CFG families: cfg of the slow and of the fast phase (1: one pass)
    negative_prompt: str
    loras: tuple[str, str]  # file names in ComfyUI's models/loras
    seed: int = 0
    prompt: str = PROMPT
    tiny: bool = False  # trained on a tiny: model (the loaders still name the full-size model's files)


# each family's loaders: (class, inputs, title) of the diffusion model, the text encoder and the VAE; file names are
# the ones ComfyUI's own example workflows use, to be replaced by the user's files
_FLUX2_VAE = ("VAELoader", {"vae_name": "flux2-vae.safetensors"}, "FLUX.2 VAE")
_QWEN_CLIP = ("CLIPLoader", {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors", "type": "qwen_image"},
              "Qwen2.5-VL 7B text encoder")
_QWEN_VAE = ("VAELoader", {"vae_name": "qwen_image_vae.safetensors"}, "Qwen-Image VAE")
LOADERS = {
    "flux": (("UNETLoader", {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}, "FLUX.1 model"),
             ("DualCLIPLoader", {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors",
                                 "type": "flux"}, "T5-XXL and CLIP-L text encoders"),
             ("VAELoader", {"vae_name": "ae.safetensors"}, "FLUX.1 VAE")),
    "flux2-dev": (("UNETLoader", {"unet_name": "flux2_dev_fp8mixed.safetensors", "weight_dtype": "default"},
                   "FLUX.2 dev model"),
                  ("CLIPLoader", {"clip_name": "mistral_3_small_flux2_bf16.safetensors", "type": "flux2"},
                   "Mistral Small 3 text encoder"), _FLUX2_VAE),
    "flux2-klein": (("UNETLoader", {"unet_name": "flux-2-klein-base-9b.safetensors", "weight_dtype": "default"},
                     "FLUX.2 klein base model"),
                    ("CLIPLoader", {"clip_name": "qwen_3_8b.safetensors", "type": "flux2"},
                     "Qwen3 text encoder (8B for klein 9B, 4B for klein 4B)"), _FLUX2_VAE),
    "sd3": (("CheckpointLoaderSimple", {"ckpt_name": "sd3.5_large.safetensors"}, "SD3 checkpoint (model, VAE)"),
            ("TripleCLIPLoader", {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
                                  "clip_name3": "t5xxl_fp16.safetensors"}, "CLIP-L, CLIP-G and T5-XXL"),
            None),  # the checkpoint's VAE (output 2)
    "qwen_image": (("UNETLoader", {"unet_name": "qwen_image_fp8_e4m3fn.safetensors", "weight_dtype": "default"},
                    "Qwen-Image model"), _QWEN_CLIP, _QWEN_VAE),
    "qwen_image_edit": (("UNETLoader", {"unet_name": "qwen_image_edit_fp8_e4m3fn.safetensors",
                                        "weight_dtype": "default"}, "Qwen-Image-Edit model"), _QWEN_CLIP, _QWEN_VAE),
    "qwen_image_edit_plus": (("UNETLoader", {"unet_name": "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                                             "weight_dtype": "default"}, "Qwen-Image-Edit-2509 model"),
                             _QWEN_CLIP, _QWEN_VAE),
}
EMBEDDED = ("flux", "flux2-dev")  # guidance in the conditioning, one pass per step
LATENT = {"flux2-dev": "EmptyFlux2LatentImage", "flux2-klein": "EmptyFlux2LatentImage"}  # else EmptySD3LatentImage
EDIT_ENCODER = {"qwen_image_edit": ("TextEncodeQwenImageEdit", "image"),
                "qwen_image_edit_plus": ("TextEncodeQwenImageEditPlus", "image1")}


def sigma_text(values) -> str:
    """Comma-separated, each the shortest decimal that gives the same float32 back, never in exponent form
    (ComfyUI's ManualSigmas reads the numbers with a regular expression that has no exponents, into float32)."""
    return ", ".join(np.format_float_positional(np.float32(v), unique=True, trim="-") for v in values)


def comfy_sigmas(ladder: Ladder) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ComfyUI's two sigma lists of a ladder: a sampler runs len(sigmas) - 1 steps, so the slow list ends at the
    first fast sigma (the split) and the fast list starts there and ends at 0."""
    return tuple(ladder.slow) + (ladder.fast[0],), tuple(ladder.fast) + (0.0,)


class _Graph:
    """API-format nodes, numbered in the order added."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, title: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return node_id


def _loaders(g: _Graph, kind: str) -> tuple[list, list, list]:
    """(model, clip, vae) links of the family's loaders."""
    model_node, clip_node, vae_node = LOADERS[kind]
    m = g.add(model_node[0], f"{model_node[2]}: pick your file", **model_node[1])
    c = g.add(clip_node[0], f"{clip_node[2]}: pick your files", **clip_node[1])
    if vae_node is None:
        return [m, 0], [c, 0], [m, 2]
    v = g.add(vae_node[0], f"{vae_node[2]}: pick your file", **vae_node[1])
    return [m, 0], [c, 0], [v, 0]


def _encode(g: _Graph, kind: str, clip: list, vae: list, text: str, title: str) -> list:
    if kind not in EDIT_ENCODER:
        return [g.add("CLIPTextEncode", title, text=text, clip=clip), 0]
    cls, image_input = EDIT_ENCODER[kind]
    image = [g.add("LoadImage", "control image: pick your file", image="control.png"), 0]
    return [g.add(cls, title, prompt=text, clip=clip, vae=vae, **{image_input: image}), 0]


def _guiders(g: _Graph, plan: WorkflowPlan, models: list[list], clip: list, vae: list) -> list[list]:
    """The slow and the fast guider."""
    positive = _encode(g, plan.kind, clip, vae, plan.prompt, "prompt")
    if plan.kind in EMBEDDED:
        if plan.guidance is not None:
            positive = [g.add("FluxGuidance", "guidance (from the run)", conditioning=positive,
                              guidance=float(plan.guidance)), 0]
        return [[g.add("BasicGuider", f"{role} guider", model=m, conditioning=positive), 0]
                for role, m in zip(("slow", "fast"), models)]
    negative = _encode(g, plan.kind, clip, vae, plan.negative_prompt, "negative prompt")
    out = []
    for role, m, cfg in zip(("slow", "fast"), models, plan.cfg):
        if plan.kind.startswith("qwen_image"):
            m = [g.add("CFGNorm", f"{role}: norm-rescaled CFG", model=m, strength=1.0, pre_cfg=True), 0]
        out.append([g.add("CFGGuider", f"{role} guider (cfg from the run)", model=m, positive=positive,
                          negative=negative, cfg=float(cfg)), 0])
    return out


def build_workflow(plan: WorkflowPlan) -> dict[str, dict]:
    """The API-format graph of `plan` (see the module docstring)."""
    if plan.kind not in LOADERS:
        raise GlanceError(f"export: no ComfyUI workflow for {plan.kind} (families with one: {', '.join(LOADERS)})")
    g = _Graph()
    base, clip, vae = _loaders(g, plan.kind)
    models = [[g.add("LoraLoaderModelOnly", f"{role} LoRA", model=base, lora_name=name, strength_model=1.0), 0]
              for role, name in zip(("slow", "fast"), plan.loras)]
    guiders = _guiders(g, plan, models, clip, vae)
    latent = [g.add(LATENT.get(plan.kind, "EmptySD3LatentImage"), "empty latent (the run's size)",
                    width=plan.width, height=plan.height, batch_size=1), 0]
    sampler = [g.add("KSamplerSelect", "Euler", sampler_name="euler"), 0]
    noises = ([g.add("RandomNoise", "noise seed", noise_seed=plan.seed), 0],
              [g.add("DisableNoise", "no new noise: continue the slow latent"), 0])
    for role, sigmas, guider, noise in zip(("slow", "fast"), (plan.slow_sigmas, plan.fast_sigmas), guiders, noises):
        s = [g.add("ManualSigmas", f"{role} sigmas (from the run)", sigmas=sigma_text(sigmas)), 0]
        latent = [g.add("SamplerCustomAdvanced", f"{role} sampler", noise=noise, guider=guider, sampler=sampler,
                        sigmas=s, latent_image=latent), 0]
    image = [g.add("VAEDecode", "decode", samples=latent, vae=vae), 0]
    g.add("SaveImage", "save", images=image, filename_prefix="glance")
    return g.nodes


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_workflow(graph: dict, schema: dict) -> list[str]:
    """What is wrong with an API-format graph against ComfyUI's node definitions (`schema`): an unknown class,
    a required input missing, an unknown input, a link to a missing node or output, or of another type, a value
    outside a fixed list of choices. [] when it is right."""
    nodes, problems = schema["nodes"], []
    for nid, node in graph.items():
        cls = node.get("class_type")
        if cls not in nodes:
            problems.append(f"node {nid}: class {cls!r} is not a ComfyUI node")
            continue
        spec, inputs = nodes[cls], node.get("inputs", {})
        types = {**spec["required"], **spec["optional"]}
        problems += [f"node {nid} ({cls}): required input {k!r} missing" for k in spec["required"] if k not in inputs]
        for k, v in inputs.items():
            if k not in types:
                problems.append(f"node {nid} ({cls}): no input {k!r}")
            elif isinstance(v, list):
                problems += _link_problem(graph, nodes, nid, cls, k, v, types[k])
            elif v not in spec.get("options", {}).get(k, [v]):
                problems.append(f"node {nid} ({cls}): {k}={v!r} is not one of ComfyUI's choices")
    return problems


def _link_problem(graph, nodes, nid, cls, name, link, want) -> list[str]:
    src = graph.get(str(link[0])) if len(link) == 2 else None
    if src is None or src.get("class_type") not in nodes:
        return [f"node {nid} ({cls}): input {name!r} links to {link}, not a known node"]
    outputs = nodes[src["class_type"]]["outputs"]
    if not isinstance(link[1], int) or not 0 <= link[1] < len(outputs):
        return [(f"node {nid} ({cls}): input {name!r} links to output {link[1]} of {src['class_type']}, which has "
                 f"{len(outputs)}")]
    if outputs[link[1]] != want:
        return [f"node {nid} ({cls}): input {name!r} wants {want}, gets {outputs[link[1]]} from {src['class_type']}"]
    return []


def checked_workflow(plan: WorkflowPlan) -> dict[str, dict]:
    """The graph of `plan`, checked against ComfyUI's node definitions (a mismatch is a bug of ours: an error
    before anything is written)."""
    graph = build_workflow(plan)
    problems = check_workflow(graph, load_schema())
    if problems:
        raise GlanceError(f"export: the ComfyUI workflow does not match ComfyUI's node definitions: {problems[0]}")
    return graph


def run_caption(run: Path) -> str | None:
    """The run's training caption (glancetune_config.json `captions`, the first file's by name), or None."""
    from .files import CONFIG_NAME

    try:
        captions = json.loads((run / CONFIG_NAME).read_text(encoding="utf-8")).get("captions") or {}
    except (OSError, ValueError, AttributeError):
        return None
    found = [str(captions[k]).strip() for k in sorted(captions) if str(captions[k]).strip()]
    return found[0] if found else None


def plan_for_run(run: Path, ladder: Ladder | None = None,
                 loras: tuple[str, str] = ("glance-slow.safetensors", "glance-fast.safetensors"),
                 prompt: str | None = None) -> WorkflowPlan:
    """The plan of a glance run, from its slow LoRA's record (what `generate --run` reads): ladder (or `ladder`,
    a searched one), size, the guidance and CFG phases generate samples with; the prompt: `prompt`, else the
    run's training caption, else a placeholder."""
    from ..families import model_info
    from .files import read_record

    found = read_record(run / "slow")
    if found is None:
        raise GlanceError(f"export: {run / 'slow'}: no glancetune metadata (export needs a run of `glance`)")
    rec = found[0]
    info = model_info(rec.base_model, rec.model_family)
    family = info.family
    kind = family.name if family.name != "flux2" else ("flux2-klein" if family.true_cfg else "flux2-dev")
    guidance = rec.sampling_guidance(family)
    if kind in EMBEDDED and not family.has_guidance_embedding(info.transformer_config):
        guidance = None  # e.g. FLUX.1 schnell
    phases = rec.cfg_phases or ("both" if family.cfg_on(guidance) else "none")
    cfg = tuple(float(guidance) if guidance is not None and phases in ("both", p) else 1.0 for p in ("slow", "fast"))
    slow, fast = comfy_sigmas(ladder or rec.ladder)
    width, height = rec.resolution
    text = prompt if prompt is not None else (run_caption(run) or PROMPT)
    return WorkflowPlan(kind, slow, fast, int(width), int(height), guidance, cfg, family.negative_prompt,
                        tuple(loras), prompt=text, tiny=rec.base_model.startswith("tiny:"))


def write_workflow(folder: Path, graph: dict) -> Path:
    """`folder/glance-workflow-api.json`, written to a temporary name and renamed into place."""
    path = folder / WORKFLOW_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(graph, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
