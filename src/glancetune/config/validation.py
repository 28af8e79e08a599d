"""The validation keys of the config (SimpleTuner's names): which prompts, how often, at what size and guidance.

A pydantic base class of `config.TrainConfig`, kept apart so the validation feature is one module's business. The
keys never change the trained LoRAs, so they are left out of the run identity (resume and output-folder checks);
`train/validate.py` reads them. Validation runs when a prompt is given (`validation_prompt`, `validation_prompts`
or `user_prompt_library`) and neither `disable_validation` nor `validation_disable` is true.
"""
from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator, model_validator

from ..schedule import LADDER_STEPS

#: the base model's reference image: its own N-step schedule (the one the Glance ladder is cut from)
BASE_REFERENCE_STEPS = LADDER_STEPS
VALIDATION_KEYS = frozenset({
    "validation_prompt", "validation_prompts", "user_prompt_library", "validation_steps", "validation_seed",
    "validation_resolution", "validation_guidance", "validation_negative_prompt", "num_validation_images",
    "validation_num_inference_steps", "disable_validation", "validation_disable", "validation_image",
    "validation_ladder_file"})
_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*$")


def parse_resolution(value) -> tuple[int, int] | None:
    """`1024x768` (width x height), `1024` or 1024 -> (width, height); None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected WIDTHxHEIGHT or a number of pixels, got {value!r}")
    if isinstance(value, (int, float)):
        if value != int(value) or value <= 0:
            raise ValueError(f"expected a positive number of pixels, got {value!r}")
        return int(value), int(value)
    m = _SIZE.match(str(value))
    if not m:
        extra = " (one size only: several resolutions are not supported)" if "," in str(value) else ""
        raise ValueError(f"expected WIDTHxHEIGHT (e.g. 1024x1024) or a number, got {value!r}{extra}")
    w, h = int(m.group(1)), int(m.group(2) or m.group(1))
    if w <= 0 or h <= 0:
        raise ValueError(f"sides must be positive, got {value!r}")
    return w, h


class ValidationKeys(BaseModel):
    """Validation images during training (train/validate.py; README "Validation images")."""

    validation_prompt: str | None = Field(None, description="prompt of the validation images (name "
                                          "'validation'); with validation_prompts / user_prompt_library, all run")
    validation_prompts: str | dict[str, str] | list[str] | None = Field(
        None, description="more validation prompts: a prompt file (JSON name -> prompt as user_prompt_library, a "
        "JSON list, or text with one prompt a line, # comments skipped), a mapping, or a list (named prompt-0, prompt-1, ...); <subject>-style placeholders are used as written")
    user_prompt_library: str | None = Field(None, description="SimpleTuner's JSON file of name -> prompt (a JSON "
                                               "list or a text file, one prompt a line, is read too)")
    validation_steps: int = Field(100, ge=1, description="validation images every N job steps (also at step 0 "
                                  "and at the end)")
    validation_seed: int | None = Field(None, ge=0, description="seed of the first validation image of each "
                                        "prompt; image j uses seed + j (default: the config's seed)")
    validation_resolution: str | int | None = Field(None, description="WIDTHxHEIGHT or a number (default: the "
                                                    "training size)")
    validation_guidance: float | None = Field(None, ge=0, description="guidance of the validation images (default: "
                                              "what generate uses: the family's inference guidance)")
    validation_negative_prompt: str | None = Field(None, description="true-CFG families (SD3, Qwen-Image): the "
                                                   "negative prompt (default: the pipeline's own)")
    num_validation_images: int = Field(1, ge=1, description="images per prompt (seeds validation_seed + j)")
    validation_num_inference_steps: int = Field(BASE_REFERENCE_STEPS, ge=1, description="steps of the base "
                                                "model's own reference image at step 0")
    validation_image: str | None = Field(None, description="edit models: the control image every validation prompt "
                                         "edits (default: the control image of the first training pair)")
    validation_ladder_file: str | None = Field(None, description="a searched ladder (`search-ladder`'s file): the "
                                               "grids gain the base model on it, a training-free column")
    disable_validation: bool = Field(False, description="no validation images even when prompts are given")
    validation_disable: bool = Field(False, description="SimpleTuner's other name for disable_validation")

    @field_validator("validation_resolution")
    @classmethod
    def _resolution(cls, v):
        parse_resolution(v)
        return v

    @field_validator("validation_prompt", "validation_negative_prompt", "validation_image")
    @classmethod
    def _text(cls, v):
        if v is not None and not isinstance(v, str):
            raise ValueError("expected text")
        return v

    @field_validator("validation_prompts")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, dict):
            bad = [k for k, p in v.items() if not isinstance(p, str) or not p.strip()]
            if bad:
                raise ValueError(f"prompt {bad[0]!r} is empty")
        if isinstance(v, list) and any(not isinstance(p, str) or not p.strip() for p in v):
            raise ValueError("a prompt of the list is empty")
        return v

    @model_validator(mode="after")
    def _validation_prompt_not_empty(self):
        if self.validation_prompt is not None and not self.validation_prompt.strip():
            raise ValueError("validation_prompt: the prompt is empty (remove the key to turn validation off)")
        return self

    @property
    def validation_size(self) -> tuple[int, int] | None:
        return parse_resolution(self.validation_resolution)

    @property
    def validation_enabled(self) -> bool:
        given = self.validation_prompt or self.validation_prompts or self.user_prompt_library
        return bool(given) and not (self.disable_validation or self.validation_disable)
