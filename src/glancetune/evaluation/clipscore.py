"""CLIP score for `glancetune eval --clip-model PATH`: how well each image matches its prompt, by a CLIP model the
user already has (a local folder, or a hub id already in the local cache: nothing is downloaded).

The score is torchmetrics' / Hessel et al.'s CLIPScore per image: 100 * max(cos(image embedding, text embedding), 0),
the embeddings being stock transformers `CLIPModel.get_image_features` / `get_text_features` of the model's own
`CLIPProcessor` inputs (the prompt truncated to the tokenizer's length, 77 for CLIP). Unlike PSNR / SSIM it needs no
reference: every sampler gets its own score, and Glance wins a pair when its score is higher.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import GlanceError

log = logging.getLogger(__name__)


def check_clip_model(ref: str) -> None:
    """Before any weights load: `ref` names a CLIP model available locally (a folder, or a hub id in the local
    cache) whose config says model_type clip."""
    from transformers import PretrainedConfig

    path = Path(ref).expanduser()
    if path.exists() and not path.is_dir():
        raise GlanceError(f"--clip-model: {ref} is a file; give the CLIP model's folder")
    if not path.exists() and (path.is_absolute() or ref.startswith(".")):
        raise GlanceError(f"--clip-model: {ref}: folder not found")
    try:
        config, _ = PretrainedConfig.get_config_dict(str(path) if path.is_dir() else ref, local_files_only=True)
    except (OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GlanceError(f"--clip-model: {ref}: not a CLIP model available locally ({msg}); nothing is "
                          "downloaded: give a local folder holding a CLIPModel and its processor") from None
    if config.get("model_type") != "clip":
        raise GlanceError(f"--clip-model: {ref}: model_type is {config.get('model_type')!r}, not 'clip' (give a "
                          "CLIPModel folder, e.g. a download of openai/clip-vit-large-patch14)")


class ClipScorer:
    """The CLIP model and processor of `ref`, loaded from local files only, on `device`."""

    def __init__(self, ref: str, device):
        from transformers import CLIPModel, CLIPProcessor

        check_clip_model(ref)
        ref = str(Path(ref).expanduser()) if Path(ref).expanduser().is_dir() else ref
        try:
            self.processor = CLIPProcessor.from_pretrained(ref, local_files_only=True)
            self.model = CLIPModel.from_pretrained(ref, local_files_only=True).eval().to(device)
        except (OSError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GlanceError(f"--clip-model: {ref}: cannot load the CLIP model or its processor ({msg})") from None
        self.device = device
        self.texts: dict[str, torch.Tensor] = {}

    def _text(self, text: str) -> torch.Tensor:
        if text not in self.texts:
            tok = self.processor.tokenizer([text], padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                e = _features(self.model.get_text_features(**tok.to(self.device)))
            self.texts[text] = e / e.norm(dim=-1, keepdim=True)
        return self.texts[text]

    def __call__(self, image, text: str) -> float:
        """CLIP score of one PIL image for one prompt."""
        pixels = self.processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            e = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype)))
        e = e / e.norm(dim=-1, keepdim=True)
        return float(100 * torch.clamp((e * self._text(text)).sum(), min=0))


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooled projection is `pooler_output`; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
