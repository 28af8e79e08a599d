"""The family registry: `model_family` -> its adapter. Adding a family = its file in this folder + one entry here."""
from __future__ import annotations

from .base import Family, FamilyGroup
from .flux import Flux1
from .flux2 import Flux2Dev, Flux2Klein
from .qwen_image import QwenImage
from .qwen_image_edit import QwenImageEdit, QwenImageEditPlus
from .sd3 import SD3

# model_family -> family; FLUX.2's flavours use two pipeline classes, so its entry is a group of two adapters
FAMILIES: dict[str, Family] = {f.name: f for f in (Flux1(), FamilyGroup(Flux2Klein(), Flux2Dev()), SD3(),
                                                   QwenImage(), QwenImageEdit(), QwenImageEditPlus())}
