"""Qwen-Image-Edit (QwenImageEditPipeline) and Edit-Plus (QwenImageEditPlusPipeline): Qwen-Image with a control image.

The control image conditions the model twice, exactly as the stock pipelines do at inference:
- the prompt is encoded by Qwen2.5-VL together with the control image (the pipeline's processor and template);
- the control image's VAE latents are packed and appended after the target tokens (`img_shapes` lists both), and
  the transformer's prediction is sliced back to the target tokens.

Both are computed here with the pipeline's own methods (`image_processor.resize/preprocess`, `encode_prompt`,
`prepare_latents`) and the pipeline module's own sizing (`calculate_dimensions`, and for Edit-Plus the module
constants CONDITION_IMAGE_SIZE / VAE_IMAGE_SIZE, read at call time), so a training sample is conditioned exactly as
`pipe(image=control, height=H, width=W)` conditions the generation at the training size.
"""
from __future__ import annotations

import torch

from ..errors import GlanceError
from .qwen_image import QwenImage, _qwen_image_components
from .tiny_parts import qwen2vl_processor


def build_qwen_image_edit(plus: bool = False):
    """A tiny random QwenImageEditPipeline (QwenImageEditPlusPipeline with `plus`): the Qwen-Image components
    (Qwen-Image-Edit's scheduler config equals Qwen-Image's) plus a stock Qwen2VLProcessor where torchvision is
    available. Without torchvision the folder is saved with `processor: null` and loads only with a processor given
    (`components={"processor": ...}`, see README "Pointing at a real model")."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    parts = _qwen_image_components()
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return cls(processor=qwen2vl_processor(parts["tokenizer"]), **parts)


class QwenImageEdit(QwenImage):
    name = "qwen_image_edit"

    def tiny_builders(self):
        return {"qwen_image_edit": build_qwen_image_edit}

    flavours = {None: "Qwen/Qwen-Image-Edit"}
    unsupported_flavours = {}
    flavour_families = {}
    pipeline_class_names = ("QwenImageEditPipeline",)
    needs_control_image = True
    #: prepare_latents takes a list of control images (Edit-Plus) rather than one
    multi_image = False
    # true_cfg_scale of the Qwen-Image-Edit model card and the edit pipelines' default (no Glance edit recipe exists)
    default_cfg = 4.0
    #: the area QwenImageEditPipeline.__call__ passes to calculate_dimensions for the control image (hard-coded there)
    condition_area = 1024 * 1024

    def tread_routable(self, transformer_kwargs: dict) -> int | None:
        """TREAD routes the target's tokens; the control image's, appended after them, always pass."""
        t, h, w = transformer_kwargs["img_shapes"][0][0]
        return t * h * w

    def pipeline_class(self):
        from diffusers import QwenImageEditPipeline

        return QwenImageEditPipeline

    def pipeline_module(self):
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as module

        return module

    def load_pipeline(self, path, dtype, **components):
        """The stock from_pretrained. A folder saved without a processor (tiny Edit folders built where torchvision
        is missing: a Qwen2VLProcessor needs it) loads only with `processor=` given; otherwise it is refused here."""
        from .hub import read_config

        if components.get("processor") is None and read_config(path, "model_index.json").get("processor",
                                                                                              [None])[0] is None:
            raise GlanceError(f"{path}: the pipeline has no processor (model_index.json 'processor' is null); "
                              f"{self.name} encodes the prompt with the control image through a Qwen2VLProcessor, "
                              "which transformers >= 5 builds only with torchvision (tiny Edit folders built "
                              "without it have none): use a complete folder, or pass one in Python as "
                              "components={'processor': ...}")
        return super().load_pipeline(path, dtype, **components)

    # --- conditioning, mirroring the pipeline's __call__ --------------------------------------------------------
    def condition_images(self, pipe, control):
        """control (PIL) -> (what the pipeline hands `encode_prompt` as image, list of [1,3,1,h,w] VAE inputs)."""
        m = self.pipeline_module()
        w, h, _ = m.calculate_dimensions(self.condition_area, control.size[0] / control.size[1])
        resized = pipe.image_processor.resize(control, h, w)
        return resized, [pipe.image_processor.preprocess(resized, h, w).unsqueeze(2)]

    def encode_prompts(self, pipe, prompts, device, max_sequence_length, control=None):
        if control is None:
            raise GlanceError(f"{self.name}: an edit model needs a control image for every caption")
        prompt_image, _ = self.condition_images(pipe, control)
        embeds, mask = pipe.encode_prompt(prompt=prompts, image=prompt_image, device=device,
                                          max_sequence_length=max_sequence_length)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return {"encoder_hidden_states": embeds, "encoder_hidden_states_mask": mask}

    def encode_images(self, pipe, pixels, control=None):
        if control is None:
            raise GlanceError(f"{self.name}: an edit model needs a control image for every target image")
        x0, image = super().encode_images(pipe, pixels)
        _, vae_images = self.condition_images(pipe, control)
        b = x0.shape[0]
        # the pipeline's own call; `latents=x0` only skips drawing noise (the returned latents are not used);
        # z_dim = transformer in_channels // 4 (the transformer is not loaded while encoding)
        _, control_latents = pipe.prepare_latents(
            vae_images if self.multi_image else vae_images[0], b, pipe.vae.config.z_dim,
            pixels.shape[-2], pixels.shape[-1], pipe.text_encoder.dtype, pipe.vae.device, None, latents=x0)
        f = pipe.vae_scale_factor * 2
        shapes = [(1, v.shape[-2] // f, v.shape[-1] // f) for v in vae_images]
        return x0, {"img_shapes": [image["img_shapes"][0] + shapes] * b, "control_latents": control_latents}

    def collate(self, items):
        shapes = {tuple(it["control_latents"].shape[1:]) for it in items if "control_latents" in it}
        if len(shapes) > 1:
            raise GlanceError("train_batch_size: control images of different aspect ratios give different control "
                              f"token counts {sorted(s[0] for s in shapes)}; they cannot share a batch (use "
                              "train_batch_size 1 or control images of one aspect ratio)")
        return super().collate(items)

    def predict(self, transformer, noisy, timestep, text, image, guidance):
        """As the pipeline: control tokens appended after the target tokens, prediction sliced back to the target."""
        image = dict(image)
        control = image.pop("control_latents")
        hidden = torch.cat([noisy, control.to(noisy.dtype)], dim=1)
        return super().predict(transformer, hidden, timestep, text, image, guidance)[:, :noisy.shape[1]]


class QwenImageEditPlus(QwenImageEdit):
    """Edit-Plus (2509): the prompt sees the control resized to CONDITION_IMAGE_SIZE, the VAE sees it resized to
    VAE_IMAGE_SIZE (module constants), and the template names it "Picture 1"."""

    name = "qwen_image_edit_plus"

    def tiny_builders(self):
        return {"qwen_image_edit_plus": lambda: build_qwen_image_edit(plus=True)}

    flavours = {None: "Qwen/Qwen-Image-Edit-2509", "2509": "Qwen/Qwen-Image-Edit-2509",
                "2511": "Qwen/Qwen-Image-Edit-2511"}
    pipeline_class_names = ("QwenImageEditPlusPipeline",)
    multi_image = True

    def pipeline_class(self):
        from diffusers import QwenImageEditPlusPipeline

        return QwenImageEditPlusPipeline

    def pipeline_module(self):
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as module

        return module

    def condition_images(self, pipe, control):
        m = self.pipeline_module()
        ratio = control.size[0] / control.size[1]
        cw, ch = m.calculate_dimensions(m.CONDITION_IMAGE_SIZE, ratio)
        vw, vh = m.calculate_dimensions(m.VAE_IMAGE_SIZE, ratio)
        return [pipe.image_processor.resize(control, ch, cw)], [pipe.image_processor.preprocess(control, vh, vw)
                                                                 .unsqueeze(2)]
