"""The run record: the facts `generate` needs about a trained LoRA, written once per file and read back.

A LoRA header holds `glancetune.role` (slow | fast | lora), `glancetune.run` (this record as JSON: base model,
family, resolution, inference guidance, sequence length, each phase's exact fp32 sigmas, seed, steps) and SAI
`modelspec.*` keys derived from it for other tools. LoRA rank and alpha are not repeated: they are in the
diffusers adapter metadata the stock loader reads. `glancetune_config.json` of a run holds the same record.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from . import __version__
from .schedule import LADDER_STEPS, Ladder, f32

META_PREFIX = "glancetune."
FORMAT_VERSION = "2"


@dataclass
class RunRecord:
    base_model: str
    model_family: str
    resolution: tuple[int, int]  # width, height
    guidance: float | None  # the inference value: the training constant, or the middle of a random range
    max_sequence_length: int
    phases: dict[str, list[float]]  # phase name -> its exact fp32 sigmas
    seed: int = 0
    train_steps: int = 0
    learning_rate: float = 0.0
    guidance_range: list[float] | None = None  # training drew guidance uniformly in this range
    ladder_steps: int = LADDER_STEPS  # N of the N-step schedule the ladder was cut from (glance_ladder_steps)
    # true-CFG families trained with distill: the phases that sample with true CFG at `guidance` ("none": guidance
    # baked in, one pass per step; "slow"); None: the family's policy (CFG in both phases when guidance > 1)
    cfg_phases: str | None = None
    version: str = field(default=__version__)

    @property
    def ladder(self) -> Ladder | None:
        if "slow" in self.phases and "fast" in self.phases:
            return Ladder(tuple(self.phases["slow"]), tuple(self.phases["fast"]))
        return None

    def sampling_guidance(self, family) -> float | None:
        """The guidance `generate` samples with: the stored value where the record sets a CFG policy (distill),
        else the family's inference guidance for the training value."""
        return self.guidance if self.cfg_phases is not None else family.inference_guidance(self.guidance)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolution"] = list(self.resolution)
        if d["ladder_steps"] == LADDER_STEPS:  # written only when not the default: earlier files read back alike
            del d["ladder_steps"]
        if d["cfg_phases"] is None:
            del d["cfg_phases"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        d = dict(d)
        d["resolution"] = tuple(d["resolution"])
        d["phases"] = {k: [f32(x) for x in v] for k, v in d["phases"].items()}
        return cls(**d)

    def usage_hint(self) -> str:
        if self.ladder is None:
            return "glancetune generate (the sigmas in glancetune.run)"
        lad = self.ladder
        return (f"use with its partner (glancetune.partner): the slow LoRA first, switch after step {lad.boundary} of "
                f"{len(lad.sigmas)} to the fast one, Euler on the exact sigmas in glancetune.run (glancetune generate "
                "--run <dir> does this)")

    def header(self, role: str) -> dict[str, str]:
        """safetensors metadata for the LoRA file of phase `role`."""
        w, h = self.resolution
        ts = [s * 1000 for s in self.phases[role]]
        meta = {META_PREFIX + "format_version": FORMAT_VERSION, META_PREFIX + "role": role,
                META_PREFIX + "run": json.dumps(self.to_dict(), sort_keys=True),
                "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{self.model_family}/lora",
                "modelspec.implementation": "diffusers", "modelspec.title": f"glance-{role}",
                "modelspec.resolution": f"{w}x{h}", "modelspec.timestep_range": f"{min(ts):.4f},{max(ts):.4f}",
                "modelspec.usage_hint": self.usage_hint()}
        if self.ladder is not None:
            other = "fast" if role == "slow" else "slow"
            meta[META_PREFIX + "partner"] = f"../{other}/pytorch_lora_weights.safetensors"
        return meta


def from_header(meta: dict[str, str]) -> tuple[RunRecord, str] | None:
    """(record, role) from a LoRA header, or None when the file has no glancetune record."""
    raw = meta.get(META_PREFIX + "run")
    if raw is None:
        return None
    return RunRecord.from_dict(json.loads(raw)), meta[META_PREFIX + "role"]
