"""Reading LoRA files that carry no glancetune metadata: diffusers key layouts, alpha, published pairs.

Files we write (and any file with diffusers' `lora_adapter_metadata`) load with stock `pipe.load_lora_weights`.
A *diffusers-layout* file without that metadata (keys `[transformer.]<module>.<suffix>`, suffix one of
`lora_A/lora_B.weight|bias`, `lora.down/lora.up.weight`, `alpha`) is read here instead, because stock diffusers
mis-loads two common variants of it:

- alpha: with no metadata and no `.alpha` tensors diffusers assumes alpha = rank (scale 1). We do the same unless
  the pair is a recognised published one (`PublishedLoras`), whose training alpha we apply;
- `lora.down/lora.up` keys (what `convert_state_dict_to_diffusers` writes for to_q/to_k/to_v/to_out.0) are only
  renamed by diffusers when the file's first key is not `lora_A`; otherwise those modules are silently skipped.
  Keys without the `transformer.` prefix are skipped altogether.

We rename the keys to peft's `lora_A/lora_B`, build the `LoraConfig` kwargs (rank and alpha per module) and hand
both to the transformer's stock `load_lora_adapter`. Other formats (kohya, ComfyUI, DoRA) go to diffusers'
converters unchanged. Keys naming modules the transformer lacks are refused (diffusers would only warn).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GlanceError

PREFIX = "transformer."
# suffix in the file -> peft suffix
SUFFIXES = {".lora_A.weight": ".lora_A.weight", ".lora_B.weight": ".lora_B.weight",
            ".lora_A.bias": ".lora_A.bias", ".lora_B.bias": ".lora_B.bias",
            ".lora.down.weight": ".lora_A.weight", ".lora.up.weight": ".lora_B.weight",
            ".lora.up.bias": ".lora_B.bias", ".alpha": ".alpha"}
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key


@dataclass
class LoraLayout:
    """The keys of one LoRA file, grouped by module (no tensor data read)."""

    path: Path
    keys: list[str]
    modules: dict[str, dict[str, str]] = field(default_factory=dict)  # module -> {peft suffix: file key}
    unknown: list[str] = field(default_factory=list)  # keys with no known LoRA suffix
    ranks: dict[str, int] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)

    @property
    def prefixed(self) -> bool:
        return all(k.startswith(PREFIX) for k in self.keys)

    @property
    def has_alpha(self) -> bool:
        return any(".alpha" in parts for parts in self.modules.values())

    @property
    def down_up_modules(self) -> list[str]:
        return [m for m, parts in self.modules.items() if parts.get(".lora_A.weight", "").endswith(".lora.down.weight")]

    def diffusers_layout(self, children: set[str] | None = None) -> bool:
        """Prefixed keys are always ours to check; unprefixed ones only when every key is a LoRA key of a module
        under one of the transformer's `children` (so kohya / ComfyUI files go to diffusers' converters)."""
        if not self.keys or any("lora_magnitude_vector" in k for k in self.keys):
            return False
        if self.prefixed:
            return True
        return (not self.unknown and not any(k.startswith(PREFIX) for k in self.keys)
                and (children is None or all(m.split(".")[0] in children for m in self.modules)))


def read_layout(path: Path) -> LoraLayout:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            header = dict(f.metadata() or {})
            shapes = {k: f.get_slice(k).get_shape() for k in keys
                      if k.endswith((".lora_A.weight", ".lora.down.weight"))}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise GlanceError(f"{path}: not a readable safetensors file ({e})") from None
    lay = LoraLayout(path, keys, header=header)
    for k in keys:
        name = k[len(PREFIX):] if k.startswith(PREFIX) else k
        suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            lay.unknown.append(k)
            continue
        module = name[:-len(suffix)]
        lay.modules.setdefault(module, {})[SUFFIXES[suffix]] = k
        if k in shapes:
            lay.ranks[module] = int(shapes[k][0])
    return lay


def check_layout(lay: LoraLayout, modules: set[str]) -> None:
    """One-line errors for keys that are not LoRA weights, name no module of this transformer, or lack a pair."""
    def fail(what: str, bad: list[str]) -> None:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise GlanceError(f"{lay.path}: {len(bad)} {what}: {', '.join(bad[:3])}{more}")

    if lay.unknown:
        fail("keys are not LoRA weights (expected <module>.lora_A/lora_B.weight, .lora.down/.lora.up.weight or "
             ".alpha)", lay.unknown)
    bad = [k for m, parts in lay.modules.items() if m not in modules for k in parts.values()]
    if bad:
        fail("LoRA keys match no module of this transformer", bad)
    unpaired = [next(iter(parts.values())) for parts in lay.modules.values()
                if ".lora_A.weight" not in parts or ".lora_B.weight" not in parts]
    if unpaired:
        fail("LoRA keys lack their lora_A/lora_B partner", unpaired)


# --- published pairs ------------------------------------------------------------------------------------------
def all_published():
    from ..families import FAMILIES

    return [(fam, p) for fam in FAMILIES.values() for p in fam.published]


def published_by_name(name: str):
    """(family, PublishedLoras) for a --preset value."""
    found = [(f, p) for f, p in all_published() if p.name == name]
    if not found:
        valid = ", ".join(dict.fromkeys(["auto", "none"] + [p.name for _, p in all_published()]))
        raise GlanceError(f"--preset: unknown preset {name!r}; valid: {valid}")
    return found[0]


def matches(lay: LoraLayout, pub) -> bool:
    """The recognition rule of `PublishedLoras` (see its docstring)."""
    if lay.header.get(ADAPTER_METADATA_KEY) or any(k.startswith("glancetune.") for k in lay.header):
        return False
    if not lay.diffusers_layout() or lay.unknown or lay.has_alpha or not lay.modules:
        return False
    pat = re.compile(rf"{re.escape(pub.blocks)}\.(\d+)\.(.+)")
    per_block: dict[str, set[str]] = {}
    for m in lay.modules:
        hit = pat.fullmatch(m)
        if hit is None:
            return False
        per_block.setdefault(hit.group(1), set()).add(hit.group(2))
    types = set(pub.module_types)
    return (all(v == types for v in per_block.values()) and set(lay.ranks) == set(lay.modules)
            and set(lay.ranks.values()) == {pub.rank})


def detect_published(*paths: Path):
    """(family, PublishedLoras) if every file matches the same published pair, else None."""
    lays = [read_layout(p) for p in paths]
    for fam, pub in all_published():
        if all(matches(lay, pub) for lay in lays):
            return fam, pub
    return None


# --- loading ----------------------------------------------------------------------------------------------------
def _types(modules) -> str:
    return ", ".join(sorted({re.sub(r"^[^.]+\.\d+\.", "", m) for m in modules}))


def _stock_note(transformer, path: Path, lay, adapter_name: str) -> str:
    """After stock loading of one of our files: which modules diffusers skipped (their lora_B is not the file's)."""
    import torch
    from safetensors import safe_open

    skipped = []
    with safe_open(str(path), framework="pt") as f:
        for m, parts in lay.modules.items():
            got = getattr(transformer.get_submodule(m), "lora_B", {})
            if adapter_name not in got or not torch.equal(
                    got[adapter_name].weight.detach().cpu().float(), f.get_tensor(parts[".lora_B.weight"]).float()):
                skipped.append(m)
    cfg = transformer.peft_config[adapter_name]
    what = f"skipped {len(skipped)} of {len(lay.modules)} modules ({_types(skipped)})" if skipped else \
        f"loaded all {len(lay.modules)} modules"
    return (f"notice: {path.name}: stock diffusers loading {what}, alpha {cfg.lora_alpha:g} "
            f"(scale {cfg.lora_alpha / cfg.r:g})")


def load_adapter(pipe, path: Path, adapter_name: str, alpha_per_rank: float | None = None,
                 stock: bool = False) -> str | None:
    """Load one LoRA file into `pipe` as `adapter_name`; returns a one-line notice, or None.

    `alpha_per_rank`: alpha to use (times the rank) when the file stores none (a published pair's training alpha).
    `stock`: load exactly as `pipe.load_lora_weights(file)` does (no key renaming, no alpha), after the key check.
    """
    transformer = pipe.transformer
    lay = read_layout(path)
    ours = lay.diffusers_layout({n for n, _ in transformer.named_children()})
    if ours:
        check_layout(lay, {n for n, _ in transformer.named_modules()})
    if stock or not ours or lay.header.get(ADAPTER_METADATA_KEY):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
        return _stock_note(transformer, path, lay, adapter_name) if stock and ours else None

    from safetensors import safe_open

    state, alphas = {}, {}
    with safe_open(str(path), framework="pt") as f:
        for m in sorted(lay.modules):
            for suffix, key in sorted(lay.modules[m].items()):
                if suffix == ".alpha":
                    alphas[m] = float(f.get_tensor(key).float().item())
                else:
                    state[m + suffix] = f.get_tensor(key)
    ranks = lay.ranks
    ratio = alpha_per_rank if alpha_per_rank is not None else 1.0
    alpha = {m: alphas.get(m, ratio * ranks[m]) for m in ranks}
    r = Counter(ranks.values()).most_common(1)[0][0]
    a = Counter(alpha.values()).most_common(1)[0][0]
    config = {"r": r, "lora_alpha": a, "target_modules": sorted(ranks),
              "rank_pattern": {f"^{m}": v for m, v in ranks.items() if v != r},
              "alpha_pattern": {f"^{m}": v for m, v in alpha.items() if v != a},
              "use_dora": False, "lora_bias": any(k.endswith(".lora_B.bias") for k in state)}
    transformer.load_lora_adapter(state, prefix=None, adapter_name=adapter_name, metadata=config, _pipeline=pipe)
    notes = []
    if alpha_per_rank is not None and len(alphas) < len(ranks):
        notes.append(f"no alpha stored: using alpha {a:g} = {alpha_per_rank:g} x rank {r} (scale {a / r:g}), the "
                     f"training alpha; stock diffusers would use alpha = rank (scale 1)")
    if lay.down_up_modules:
        notes.append(f"{len(lay.down_up_modules)} modules stored as lora.down/lora.up ({_types(lay.down_up_modules)}) "
                     f"loaded too; stock diffusers skips them when the first key is lora_A")
    return f"notice: {path.name}: " + "; ".join(notes) if notes else None
