"""The family protocol: everything the trainer and sampler need to know about one model family.

The training loop and the sampler call only these methods; a family that does not fit changes the protocol,
never the loop. A family works on a loaded diffusers pipeline (`pipe`) and on plain config dicts, so that
`glancetune schedule` can answer from configs alone without loading weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import GlanceError
from ..schedule import base_sigmas, schedule_sigmas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedLoras:
    """A published slow/fast LoRA pair without glancetune metadata, recognised by its key layout (`--preset`).

    Recognised when a file has no glancetune or diffusers adapter metadata and no `.alpha` tensors, every LoRA
    module is `<blocks>.<i>.<type>` with exactly the types in `module_types` (each block having all of them), and
    every rank is `rank`. The pair then gets this ladder and guidance, and alpha = `alpha_per_rank` * rank (the
    training alpha, which the files do not store).
    """

    name: str  # the --preset value
    source: str  # where the weights are published
    base_model: str  # hub id used when --model is not given
    blocks: str  # name of the transformer's block list
    module_types: tuple[str, ...]  # module paths inside one block
    rank: int
    alpha_per_rank: float
    slow_timesteps: tuple[float, ...]  # timesteps 0-1000, as published
    fast_timesteps: tuple[float, ...]
    guidance: float
    resolution: tuple[int, int] = (1024, 1024)  # width, height


class Family:
    name: str = ""
    #: `_class_name` values in model_index.json that this family loads
    pipeline_class_names: tuple[str, ...] = ()
    #: LoRA target module suffixes used when the config names none
    default_lora_targets: tuple[str, ...] = ()
    #: named target lists (`lora_target` / `flux_lora_target`): all, attention, mlp, tiny
    lora_presets: dict[str, tuple[str, ...]] = {}
    #: pipeline components that only encode inputs (released from the device before training)
    encoder_components: tuple[str, ...] = ()
    #: transformer kwargs that carry no batch dimension (shared by every sample in a batch)
    shared_keys: frozenset[str] = frozenset()
    #: training guidance value used when the config gives none (None: the family has no guidance input)
    default_guidance: float | None = None
    #: text tokens when the config gives no tokenizer_max_length (the pipeline's default)
    default_max_sequence_length: int = 512
    #: the most text tokens the family's pipeline accepts (its check_inputs); None: no limit known
    max_sequence_length_limit: int | None = None
    #: the pipeline component whose tokenizer cuts a caption at max_sequence_length (None: not reported)
    truncating_tokenizer: str | None = None

    def dropped_tokens(self, pipe, caption: str, max_sequence_length: int) -> int:
        """Tokens of `caption` beyond what the truncating tokenizer keeps (0 when all fit or unknown)."""
        tok = getattr(pipe, self.truncating_tokenizer, None) if self.truncating_tokenizer else None
        if tok is None:
            return 0
        return max(0, len(tok(caption).input_ids) - max_sequence_length)

    #: model_flavour -> hub id (None: the family's default flavour)
    flavours: dict[str | None, str] = {}
    #: flavours we know but have not built, with the reason
    unsupported_flavours: dict[str, str] = {}
    #: flavours served by another family (model_flavour -> family name), e.g. qwen_image `edit` -> qwen_image_edit
    flavour_families: dict[str, str] = {}
    #: True for edit models: every sample has a control image, and `generate` needs `--image`
    needs_control_image: bool = False
    #: published Glance LoRA pairs for this family that carry no glancetune metadata (see PublishedLoras)
    published: tuple[PublishedLoras, ...] = ()
    #: true CFG scale of `generate` when the run stores none (families with true CFG; None: no true CFG)
    default_cfg: float | None = None
    #: ComfyUI copies (`glancetune export`): lora_A / lora_B with alpha / rank folded into lora_B and no `.alpha`
    #: keys (False: ComfyUI's "regular" lora_down / lora_up + `.alpha`)
    comfyui_folded: bool = False

    def tiny_builders(self) -> dict:
        """Tiny model name (`tiny:<name>`, `glancetune tiny <name>`) -> a function building the family's tiny random
        pipeline in code (families/tiny.py saves and caches it). Every family has at least one."""
        return {}

    def comfyui_targets(self, transformer_config: dict) -> dict[str, tuple] | None:
        """ComfyUI's LoRA key map: diffusers module -> (ComfyUI module in the original model's names, part index,
        the fused module's parts, their rows, swap halves) (`comfy_one` / `comfy_fused` build it); None: ComfyUI
        reads the diffusers module names as they are. A family without a ComfyUI layout refuses."""
        raise GlanceError(f"export: the ComfyUI layout is not built for {self.name}")

    def flavour_model(self, flavour: str | None) -> str:
        if flavour in self.unsupported_flavours:
            raise GlanceError(f"model_flavour: {flavour!r} is not implemented yet ({self.unsupported_flavours[flavour]})")
        if flavour is not None and flavour not in self.flavours:
            valid = ", ".join([f for f in self.flavours if f is not None] + list(self.flavour_families)) or "none"
            raise GlanceError(f"model_flavour: unknown flavour {flavour!r} for {self.name}; valid: {valid}")
        if flavour not in self.flavours:
            raise GlanceError(f"pretrained_model_name_or_path: required for {self.name} (or set model_flavour: "
                              f"{', '.join(f for f in self.flavours if f)})")
        return self.flavours[flavour]

    def adapter(self, pipeline_class_name: str) -> "Family":
        """The adapter for a folder whose model_index.json names this pipeline class (`FamilyGroup` picks one of its
        members; a plain family is its own adapter). `model_info` stores it as `ModelInfo.family`: the trainer and
        the sampler only ever talk to that adapter."""
        return self

    def flavour_adapter(self, flavour: str) -> "Family":
        """The adapter whose pipeline class serves `flavour` (an unknown flavour is an error)."""
        self.flavour_model(flavour)
        return self

    # --- loading -------------------------------------------------------------------------------------------
    def pipeline_class(self):
        raise NotImplementedError

    def load_pipeline(self, path: str, dtype: torch.dtype, **components):
        """The stock `from_pretrained`; `components` are handed to it and replace what the folder holds
        (`transformer=None` skips loading it; `processor=` for a tiny Edit folder saved without one).

        A local folder's weight files are checked first (missing or truncated: one line naming the file); a hub
        id loads from the local cache only when the hub cannot be asked. The stock errors of a folder without its
        weight files become one line too; other errors pass unchanged."""
        from pathlib import Path

        from .hub import check_weights, hub_offline_reason

        local = Path(path).is_dir()
        offline_hub = not local and hub_offline_reason() is not None
        if local:
            check_weights(path, skip=set(components))
        elif offline_hub:
            components.setdefault("local_files_only", True)  # the cache only: no minutes of retries
        try:
            return self.pipeline_class().from_pretrained(path, dtype=dtype, **components)
        except OSError as e:  # diffusers/transformers: "Error no file named ...", "Unable to load weights from ..."
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if not (offline_hub or msg.startswith(("Error no file named", "Unable to load weights"))):
                raise
            if offline_hub:
                raise GlanceError(f"{path}: not downloaded, or incomplete in the hub cache ({hub_offline_reason()}; "
                                  f"{msg})") from None
            raise GlanceError(f"{path}: the model's weights cannot be loaded ({msg}); the download looks "
                              "incomplete: download it again") from None

    def text_components(self) -> list[str]:
        """Pipeline folders that determine the text embedding: the text encoders, their tokenizers, and the
        processor of the models that encode the prompt with an image (absent folders count as None)."""
        enc = [c for c in self.encoder_components if c.startswith("text_encoder")]
        return enc + [c.replace("text_encoder", "tokenizer") for c in enc] + ["processor"]

    # --- geometry and schedule (config dicts only) ---------------------------------------------------------
    def alignment(self, info) -> int:
        """Image sides must be multiples of this many pixels (`info`: a ModelInfo, configs only)."""
        raise NotImplementedError

    def image_seq_len(self, info, height: int, width: int) -> int:
        """Number of image tokens the transformer sees at this size (drives the dynamic shift)."""
        a = self.alignment(info)
        return (height // a) * (width // a)

    def mu(self, scheduler_config: dict, image_seq_len: int, num_steps: int) -> float | None:
        """The `mu` the family's pipeline passes to `scheduler.set_timesteps` (None if not dynamic)."""
        raise NotImplementedError

    @staticmethod
    def linear_mu(scheduler_config: dict, image_seq_len: int, default_max_shift: float = 1.15) -> float:
        """diffusers' `calculate_shift` (FLUX.1, SD3, Qwen-Image pipelines share it) with the config's values."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = scheduler_config
        return calculate_shift(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                               c.get("base_shift", 0.5), c.get("max_shift", default_max_shift))

    def base_sigmas(self, num_steps: int):
        """The `sigmas=` the pipeline passes for a plain N-step call (None: it passes only num_inference_steps)."""
        return base_sigmas(num_steps)

    def own_schedule(self, info, width: int, height: int, num_steps: int) -> tuple[float, ...]:
        """The model's own N-step sigmas at this image size: what its stock pipeline would sample on."""
        mu = self.mu(info.scheduler_config, self.image_seq_len(info, height, width), num_steps)
        return schedule_sigmas(info.scheduler_config, num_steps, mu, self.base_sigmas(num_steps))

    def inference_guidance(self, training_guidance: float | None) -> float | None:
        """Default guidance for `generate` given the value stored at training time."""
        return training_guidance

    # --- encoding ------------------------------------------------------------------------------------------
    def encode_prompts(self, pipe, prompts: list[str], device, max_sequence_length: int,
                       control=None) -> dict[str, torch.Tensor]:
        """Transformer kwargs for the text side, batch dimension first (except `shared_keys`).

        `control`: the conditioning image (PIL) of edit families (`needs_control_image`), which encode the prompt
        with it exactly as their pipeline does; None for every other family (callers pass the sample's own, which
        only edit datasets have)."""
        raise NotImplementedError

    def encode_images(self, pipe, pixels: torch.Tensor, control=None) -> tuple[torch.Tensor, dict[str, Any]]:
        """pixels [B,3,H,W] in [-1,1] -> (x0 in the layout the transformer consumes, image-side kwargs).

        `control`: as for `encode_prompts`; edit families put the control latents into the image-side kwargs, and
        their `predict` feeds them to the transformer (appended after the target tokens), returning the target part."""
        raise NotImplementedError

    # --- the transformer call ------------------------------------------------------------------------------
    def transformer_timestep(self, sigmas: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Exactly what the family's pipeline passes as `timestep=` for these float32 sigmas at `dtype`."""
        raise NotImplementedError

    def has_guidance_embedding(self, transformer_config: dict) -> bool:
        return False

    def guidance_kwargs(self, transformer, value, batch: int, device) -> dict[str, Any]:
        """The guidance-embedding input of transformers that have one (FLUX.1 dev, FLUX.2 dev), as their pipelines
        build it: float32, one value per sample (a random-range draw is already a tensor of those)."""
        config = getattr(transformer, "module", transformer).config  # DistributedDataParallel wraps the model
        if not getattr(config, "guidance_embeds", False) or value is None:
            return {}
        if isinstance(value, torch.Tensor):
            return {"guidance": value.to(device=device, dtype=torch.float32)}
        return {"guidance": torch.full([batch], float(value), device=device, dtype=torch.float32)}

    def training_text(self, text: dict[str, Any]) -> dict[str, Any]:
        """A cached caption's transformer inputs as training gives them, once per sample (on the CPU, before the
        run's device): as cached unless the family's pipeline changes them before its transformer sees them."""
        return text

    def predict(self, transformer, noisy: torch.Tensor, timestep: torch.Tensor, text: dict, image: dict,
                guidance: float | None) -> torch.Tensor:
        kwargs = dict(text)
        kwargs.update(image)
        kwargs.update(self.guidance_kwargs(transformer, guidance, noisy.shape[0], noisy.device))
        return transformer(hidden_states=noisy, timestep=timestep, return_dict=False, **kwargs)[0]

    # --- inference ---------------------------------------------------------------------------------------------
    #: True when inference guidance is true CFG (two passes per step); False for a guidance embedding
    # --- TREAD (engine/tread.py) ------------------------------------------------------------------------------
    def tread_blocks_count(self, transformer_config: dict) -> int | None:
        """Blocks that TREAD routes index, or None where routing is not built for the family."""
        return None

    def tread_blocks(self, transformer) -> list:
        """The transformer's blocks in execution order, each either joint (takes hidden_states and
        encoder_hidden_states, returns both) or concatenated (one [text | image] hidden_states with
        encoder_hidden_states=None, returned as one tensor); each takes image_rotary_emb where the model has one."""
        raise NotImplementedError

    def tread_routable(self, transformer_kwargs: dict) -> int | None:
        """How many leading image tokens TREAD may route (the rest always pass), from the transformer's call; None:
        all of them."""
        return None

    def tread_rope_rows(self, rope, text_tokens: int, keep: torch.Tensor):
        """The rotary embedding of the text tokens and of the kept image tokens `keep`."""
        raise NotImplementedError

    true_cfg: bool = False

    def cfg_on(self, guidance: float | None) -> bool:
        """True CFG (two transformer passes per step, with a negative prompt) at this guidance."""
        return self.true_cfg and guidance is not None and guidance > 1

    #: true-CFG families: the negative prompt the pipeline uses when none is given
    negative_prompt: str = ""
    #: text kwargs of `encode_prompts` -> the stock pipeline call's argument that takes the same tensor
    prompt_call_names = {"encoder_hidden_states": "prompt_embeds", "pooled_projections": "pooled_prompt_embeds",
                         "encoder_hidden_states_mask": "prompt_embeds_mask"}

    def prompt_call_kwargs(self, text: dict[str, Any], negative: bool = False) -> dict[str, Any]:
        """`prompt_embeds=`-style pipeline kwargs from `encode_prompts` output (validation encodes its prompts
        before training, then samples without text encoders); `negative`: the `negative_...` names.

        Edit families encode the prompt together with the control image (`encode_prompts(..., control=)`): such
        embeddings are valid only in a pipeline call given that same image as `image=` (the pipeline then skips
        its own prompt encoding and still uses the image for the control latents)."""
        pre = "negative_" if negative else ""
        return {pre + self.prompt_call_names[k]: v for k, v in text.items() if k in self.prompt_call_names}

    def resume_latents(self, pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Turn `output_type="latent"` output of a `height` x `width` call into the `latents=` input of the same
        pipeline (to continue where the first call stopped)."""
        return latents

    def loop_latents(self, pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Turn latents in the layout of the pipeline's denoising loop (what its scheduler steps) into its `latents=`
        input (`search-ladder` feeds such states back in)."""
        return latents

    def pipeline_kwargs(self, guidance: float | None, max_sequence_length: int) -> dict[str, Any]:
        """Extra kwargs for the stock pipeline call (guidance, sequence length)."""
        raise NotImplementedError

    # --- helpers shared by all families --------------------------------------------------------------------
    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack per-sample kwargs into a batch: tensors are concatenated on dim 0 and lists are joined, unless
        the key is in `shared_keys` (no batch dimension)."""
        out = {}
        for key, first in items[0].items():
            if key in self.shared_keys or not isinstance(first, (torch.Tensor, list)):
                out[key] = first
            elif isinstance(first, list):
                out[key] = [x for it in items for x in it[key]]
            else:
                out[key] = torch.cat([it[key] for it in items], dim=0)
        return out

    def uncollate(self, batch: dict[str, Any], n: int) -> list[dict[str, Any]]:
        """The inverse of `collate` for `n` samples: tensors split on dim 0 (copies), lists cut evenly, shared
        keys and other values repeated."""
        out = [{} for _ in range(n)]
        for key, value in batch.items():
            if key in self.shared_keys or not isinstance(value, (torch.Tensor, list)):
                parts = [value] * n
            elif isinstance(value, list):
                k = len(value) // n
                parts = [value[i * k:(i + 1) * k] for i in range(n)]
            else:
                parts = [t.clone() for t in value.split(value.shape[0] // n)]
            for d, part in zip(out, parts):
                d[key] = part
        return out


class FamilyGroup(Family):
    """One `model_family` whose flavours load different pipeline classes (FLUX.2: Flux2KleinPipeline for klein,
    Flux2Pipeline for dev). It answers the family-level questions (flavours, accepted pipeline classes); everything
    model-specific is asked of the member adapter that `adapter()` returns for a folder's pipeline class."""

    def __init__(self, *members: Family):
        self.members = members
        self.name = members[0].name
        self.pipeline_class_names = tuple(c for m in members for c in m.pipeline_class_names)
        self.flavours, self.unsupported_flavours = {}, {}
        for m in members:
            for k, v in m.flavours.items():
                self.flavours.setdefault(k, v)  # the first member's default flavour (None) is the family's
            self.unsupported_flavours.update(m.unsupported_flavours)

    def adapter(self, pipeline_class_name):
        for m in self.members:
            if pipeline_class_name in m.pipeline_class_names:
                return m.adapter(pipeline_class_name)
        raise GlanceError(f"model_family: {self.name} does not load {pipeline_class_name} "
                          f"(expected {', '.join(self.pipeline_class_names)})")

    def flavour_adapter(self, flavour):
        self.flavour_model(flavour)
        return next(m for m in self.members if flavour in m.flavours).flavour_adapter(flavour)

    # the ComfyUI layout is a family-level fact (its members share the transformer)
    @property
    def comfyui_folded(self):
        return self.members[0].comfyui_folded

    def comfyui_targets(self, transformer_config):
        return self.members[0].comfyui_targets(transformer_config)

    def pipeline_class(self):
        raise TypeError(f"{self.name}: the pipeline class depends on the model folder "
                        f"({', '.join(self.pipeline_class_names)}); ask model_info(ref).family")
