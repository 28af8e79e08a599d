"""How the sampler switches between the slow and the fast adapter.

`Unfused` (the default): peft's active adapter (`pipe.set_adapters`), every LoRA layer adds its low-rank product at
every step — what stock diffusers does, and what the equality tests against the stock chain cover.

`Fused` (`generate --lora-mode fused`): for each phase the adapter is fused into the base weights with diffusers'
own `fuse_lora(adapter_names=[phase])`, so the steps run plain linear layers. diffusers' `unfuse_lora` subtracts the
product again, which in bf16 does not give the base weights back exactly and would drift over many images; so an
exact copy of every adapted layer's base weight is kept (memory: one more copy of the adapted layers) and written
back after `unfuse_lora`. Images equal the unfused ones to rounding (fp32: within 1/255, tests/test_fused.py); the
base weights after any number of calls are bit-identical to before. A quantized base (`--base-model-precision`) is
refused: fusing into quanto/torchao storage gave a wrong image on the tiny model (max pixel difference 237/255).
"""
from __future__ import annotations

import torch

from ..errors import GlanceError


class Unfused:
    def __init__(self, pipe):
        self.pipe = pipe

    def use(self, name: str) -> None:
        self.pipe.set_adapters(name)

    def release(self) -> None:
        pass


class BaseOnly:
    """No LoRA loaded (`generate --model M --ladder-file L`): the base model on the ladder, nothing to switch."""

    def use(self, name: str) -> None:
        pass

    def release(self) -> None:
        pass


class Fused:
    def __init__(self, pipe):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.pipe, self.current = pipe, None
        self.layers = [m for m in pipe.transformer.modules()
                       if isinstance(m, BaseTunerLayer) and hasattr(m, "base_layer")]
        packed = next((type(m.base_layer.weight.data).__name__ for m in self.layers
                       if type(m.base_layer.weight.data) is not torch.Tensor), None)
        if packed:  # fuse_lora would add a float product to quantized storage: a wrong image, not an error
            raise GlanceError(f"--lora-mode: fused needs plain base weights, but this transformer's are quantized "
                              f"({packed}); use --lora-mode unfused with --base-model-precision")
        with torch.no_grad():
            self.base = [m.base_layer.weight.detach().clone() for m in self.layers]

    def use(self, name: str) -> None:
        if name == self.current:
            return
        self.release()
        self.pipe.fuse_lora(components=["transformer"], adapter_names=[name], lora_scale=1.0)
        self.current = name

    def release(self) -> None:
        """Back to the exact base weights, no adapter fused."""
        if self.current is None:
            return
        self.pipe.unfuse_lora(components=["transformer"])
        with torch.no_grad():
            for m, w in zip(self.layers, self.base):
                m.base_layer.weight.copy_(w)
        self.current = None


MODES = {"unfused": Unfused, "fused": Fused}
