"""Extract the ComfyUI node definitions the exported workflow uses into src/glancetune/export/comfyui_nodes.json.

    python tools/comfyui_schema.py --repo PATH/TO/ComfyUI.git --commit SHA --version 0.29.0 --date 2026-07-29
    python tools/comfyui_schema.py ... --check   # exit 1 when the committed file differs

Reads ComfyUI's own source at the commit (git show, nothing imported or run): each class's inputs and outputs from
`INPUT_TYPES` / `RETURN_TYPES` (the classic nodes) or `define_schema`'s `io.Schema(node_id=..., inputs=...,
outputs=...)` (the newer ones), and the fixed choices of a few COMBO inputs (CLIPLoader's and DualCLIPLoader's
`type`, UNETLoader's `weight_dtype`, the sampler names of comfy/samplers.py). A node the workflow gains must be
added to NODES here; the test of the workflow fails until it is in the file.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "glancetune" / "export" / "comfyui_nodes.json"
FILES = ["nodes.py", "comfy_extras/nodes_custom_sampler.py", "comfy_extras/nodes_flux.py", "comfy_extras/nodes_sd3.py",
         "comfy_extras/nodes_qwen.py", "comfy_extras/nodes_cfg.py"]
NODES = {"UNETLoader", "CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader", "CheckpointLoaderSimple",
         "LoraLoaderModelOnly", "CLIPTextEncode", "FluxGuidance", "EmptySD3LatentImage", "EmptyFlux2LatentImage",
         "EmptyLatentImage", "ManualSigmas", "KSamplerSelect", "BasicGuider", "CFGGuider", "RandomNoise",
         "DisableNoise", "SamplerCustomAdvanced", "VAEDecode", "SaveImage", "LoadImage", "TextEncodeQwenImageEdit",
         "TextEncodeQwenImageEditPlus", "CFGNorm"}
V3_TYPES = {"Model": "MODEL", "Clip": "CLIP", "Vae": "VAE", "Conditioning": "CONDITIONING", "Latent": "LATENT",
            "Sigmas": "SIGMAS", "Sampler": "SAMPLER", "Guider": "GUIDER", "Noise": "NOISE", "Int": "INT",
            "Float": "FLOAT", "String": "STRING", "Boolean": "BOOLEAN", "Combo": "COMBO", "Image": "IMAGE",
            "Mask": "MASK"}
ABOUT = ("ComfyUI node definitions the exported workflow uses: class -> required/optional input names and types, "
         "output types, and the fixed choices of some COMBO inputs. Extracted from ComfyUI's own source "
         "(INPUT_TYPES/RETURN_TYPES and io.Schema of each class) at the commit below; COMBO inputs that list files "
         "(model, LoRA, VAE names) take any file name.")


def show(repo: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def _v1_type(e: ast.expr) -> str:
    if isinstance(e, ast.Constant):
        return e.value
    if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "IO":
        return e.attr
    return "COMBO"  # a list of choices or a call that lists files


def _v3(fn: ast.FunctionDef) -> dict | None:
    for call in ast.walk(fn):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "Schema":
            kw = {k.arg: k.value for k in call.keywords}
            node = {"name": kw["node_id"].value, "required": {}, "optional": {}, "outputs": []}
            for i in getattr(kw.get("inputs"), "elts", []):
                if isinstance(i, ast.Call) and isinstance(i.func, ast.Attribute):
                    optional = any(k.arg == "optional" and k.value.value for k in i.keywords)
                    node["optional" if optional else "required"][i.args[0].value] = \
                        V3_TYPES.get(i.func.value.attr, i.func.value.attr)
            node["outputs"] = [V3_TYPES.get(o.func.value.attr, o.func.value.attr)
                               for o in getattr(kw.get("outputs"), "elts", [])]
            return node
    return None


def _v1(cls: ast.ClassDef, fn: ast.FunctionDef) -> dict:
    node = {"name": cls.name, "required": {}, "optional": {}, "outputs": []}
    for r in ast.walk(fn):
        if isinstance(r, ast.Return) and isinstance(r.value, ast.Dict):
            sections = {k.value: v for k, v in zip(r.value.keys, r.value.values) if isinstance(k, ast.Constant)}
            for sec in ("required", "optional"):
                if isinstance(sections.get(sec), ast.Dict):
                    node[sec] = {k.value: _v1_type(v.elts[0]) for k, v in zip(sections[sec].keys,
                                 sections[sec].values) if k is not None and isinstance(v, ast.Tuple)}
    for st in cls.body:
        if isinstance(st, ast.Assign) and getattr(st.targets[0], "id", "") == "RETURN_TYPES":
            node["outputs"] = [_v1_type(e) for e in st.value.elts]
    return node


def nodes_of(source: str, path: str) -> dict[str, dict]:
    found = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and fn.name in ("define_schema", "INPUT_TYPES"):
                node = _v3(fn) if fn.name == "define_schema" else _v1(cls, fn)
                if node and node["name"] in NODES:
                    found[node.pop("name")] = {"file": path, **node}
    return found


def _list_after(source: str, anchor: str) -> list:
    start = source.index("[", source.index(anchor))
    return ast.literal_eval(source[start:source.index("]", start) + 1])


def options(repo: str, commit: str) -> dict[tuple[str, str], list]:
    nodes_py, samplers = show(repo, commit, "nodes.py"), show(repo, commit, "comfy/samplers.py")
    names = ast.literal_eval(re.search(r"KSAMPLER_NAMES = (\[.*?\])", samplers, re.DOTALL).group(1))
    extra = ast.literal_eval(re.search(r"SAMPLER_NAMES = KSAMPLER_NAMES \+ (\[.*?\])", samplers).group(1))
    return {("UNETLoader", "weight_dtype"): _list_after(nodes_py, '"weight_dtype": (['),
            ("CLIPLoader", "type"): _list_after(nodes_py[nodes_py.index("class CLIPLoader"):], '"type": (['),
            ("DualCLIPLoader", "type"): _list_after(nodes_py[nodes_py.index("class DualCLIPLoader"):], '"type": (['),
            ("KSamplerSelect", "sampler_name"): names + extra}


def build(repo: str, commit: str, version: str, date: str, read_from: str) -> dict:
    found = {}
    for path in FILES:
        found.update(nodes_of(show(repo, commit, path), path))
    if NODES - set(found):
        sys.exit(f"not found at {commit}: {', '.join(sorted(NODES - set(found)))}")
    fixed = options(repo, commit)
    out = {}
    for name, n in sorted(found.items()):
        entry = {"file": n["file"], "required": dict(sorted(n["required"].items())),
                 "optional": dict(sorted(n["optional"].items())), "outputs": n["outputs"]}
        choices = {inp: v for (cls, inp), v in fixed.items() if cls == name}
        if choices:
            entry["options"] = choices
        out[name] = entry
    return {"about": ABOUT, "comfyui": {"repository": "comfyanonymous/ComfyUI", "commit": commit, "version": version,
                                        "commit_date": date, "read_from": read_from}, "nodes": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="a git directory holding ComfyUI's history")
    p.add_argument("--commit", required=True)
    p.add_argument("--version", required=True, help="ComfyUI's version at the commit (comfyui_version.py)")
    p.add_argument("--date", required=True, help="the commit's date")
    p.add_argument("--read-from", default="the fork silveroxides/ComfyUI, whose head is this upstream commit")
    p.add_argument("--check", action="store_true")
    a = p.parse_args()
    text = json.dumps(build(a.repo, a.commit, a.version, a.date, a.read_from), indent=1)
    if a.check:
        return 0 if OUT.read_text(encoding="utf-8").rstrip("\n") == text else 1
    OUT.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
