"""TREAD token routing (arXiv 2501.04765), training only: in each route's window of transformer blocks only a
random subset of the image tokens is processed; the others skip the window unchanged (an identity path, so their
gradients still flow to the blocks before it) and re-enter after its last block.

`tread_config: {"routes": [{"selection_ratio": r, "start_layer_idx": a, "end_layer_idx": b}, ...]}`, SimpleTuner's
keys with **SimpleTuner's meaning**: `selection_ratio` is the fraction of image tokens *routed around* the window
(0.5 drops half; its code computes the kept count as tokens minus floor(tokens x ratio)). The FLUX.2 guide among
the seeds calls it "the fraction kept": that contradicts SimpleTuner's TREAD.md and its router, so a config copied
from SimpleTuner behaves here as it does there. Layer indices count the family's blocks in execution order (FLUX.1:
the 19 double blocks, then the 38 single blocks; FLUX.2: its 8 double then 48 single blocks, klein-9B 8 + 24),
both ends inclusive, negative from the end. Built for FLUX.1, FLUX.2, SD3 (its joint blocks, no rotary embedding),
Qwen-Image (60 blocks) and Qwen-Image-Edit / Edit-Plus / Edit-2511, where only the target's tokens are routed and
the control image's tokens, appended after them, always pass (Edit-2511's per-token modulation index follows the
rows).

How, with diffusers' own transformer and no copy of its forward: forward hooks. A pre-hook on the transformer
starts each forward (routing only while gradients are enabled: eval losses, validation and sampling are unrouted).
A pre-hook on the window's first block draws the route's kept image tokens there, from the tokens it is given
(sorted, the same for every sample of the batch; the global torch RNG, the phase's forked stream, so a resumed run
draws the same; a checkpoint recomputation reuses the draw), keeps the full sequence aside and passes the kept
tokens on; every block of the window gets the rotary embedding rows of the text tokens and of the
kept image tokens (positions follow the tokens); a hook after the last block scatters the processed tokens back
into the full sequence. Blocks come in two shapes and a window may span both: a joint block takes
`hidden_states` (image) and `encoder_hidden_states` (text) apart and returns both (FLUX.1's double and single
blocks, FLUX.2's double blocks); a concatenated block takes one [text | image] sequence with
`encoder_hidden_states=None` and returns it (FLUX.2's single blocks); there the text rows pass whole and only the
image rows are gathered and scattered. Gradient-checkpoint recomputation repeats the same gathers. A route that
would keep every token routes nothing.
"""
from __future__ import annotations

import inspect

import torch

from ..config.tread import Route, parse_routes


def _bound(module, args, kwargs) -> inspect.BoundArguments:
    b = inspect.signature(module.forward).bind(*args, **kwargs)
    return b


class Tread:
    """The hooks of one transformer's routes (`install` once, after the adapters exist)."""

    def __init__(self, routes: list[Route], blocks: list, rope_rows, routable=lambda kwargs: None):
        self.routes, self.blocks, self.rope_rows, self.routable = routes, blocks, rope_rows, routable
        # this forward's draws, as rows of the window's image sequence (the kept routable tokens, then the tokens
        # that always pass); None: the route keeps everything
        self.keep: dict[Route, torch.Tensor | None] = {}
        self.full: dict[Route, torch.Tensor] = {}  # the image tokens as the window received them
        self.txt = 0  # text tokens of this forward
        self.prefix: int | None = None  # routable image tokens (the rest always pass); None: all
        self.routing = False

    def install(self, transformer) -> None:
        transformer.register_forward_pre_hook(self._draw, with_kwargs=True)
        for r in self.routes:
            for i in range(r.start, r.end + 1):
                self.blocks[i].register_forward_pre_hook(self._enter(r, first=i == r.start), with_kwargs=True)
            self.blocks[r.end].register_forward_hook(self._leave(r), with_kwargs=True)

    def _draw(self, module, args, kwargs):
        """A new forward of the transformer: no draws yet."""
        self.keep, self.routing = {}, torch.is_grad_enabled()
        self.txt, self.prefix = kwargs["encoder_hidden_states"].shape[1], self.routable(kwargs)
        return None

    def ids(self, r: Route, n: int, device) -> torch.Tensor | None:
        """The image tokens (of the `n` routable ones) that route `r` keeps, sorted; None when it keeps them all."""
        keep = max(1, n - int(n * r.ratio))
        return None if keep == n else torch.randperm(n)[:keep].sort().values.to(device)

    def rows(self, r: Route, n: int, device) -> torch.Tensor | None:
        """The rows of an `n`-token image sequence that route `r` processes: its draw among the routable prefix,
        then every token after the prefix (an edit model's control image)."""
        m = n if self.prefix is None else self.prefix
        ids = self.ids(r, m, device)
        return ids if ids is None or m == n else torch.cat([ids, torch.arange(m, n, device=device)])

    def _enter(self, r: Route, first: bool):
        def hook(block, args, kwargs):
            if not self.routing or (not first and self.keep.get(r) is None):
                return None
            b = _bound(block, args, kwargs)
            joint = b.arguments.get("encoder_hidden_states") is not None
            if first:
                hidden = b.arguments["hidden_states"]
                image = hidden if joint else hidden[:, self.txt:]
                if r not in self.keep:  # a checkpoint recomputation finds this forward's draw
                    self.keep[r] = self.rows(r, image.shape[1], hidden.device)
                if self.keep[r] is None:
                    return None
                self.full[r] = image
                kept = image.index_select(1, self.keep[r])
                b.arguments["hidden_states"] = kept if joint else torch.cat([hidden[:, :self.txt], kept], 1)
            ids = self.keep[r]
            if "image_rotary_emb" in b.arguments:  # SD3's blocks have none (positions are added before them)
                b.arguments["image_rotary_emb"] = self.rope_rows(b.arguments["image_rotary_emb"], self.txt, ids)
            if b.arguments.get("modulate_index") is not None:  # Edit-2511: each token's modulation, by its image
                b.arguments["modulate_index"] = b.arguments["modulate_index"].index_select(1, ids)
            return b.args, b.kwargs
        return hook

    def _leave(self, r: Route):
        def hook(block, args, kwargs, output):
            ids = self.keep.get(r) if self.routing else None
            if ids is None:
                return None
            if isinstance(output, tuple):  # joint: (encoder_hidden_states, hidden_states)
                return output[0], self.full[r].index_copy(1, ids, output[1])
            return torch.cat([output[:, :self.txt], self.full[r].index_copy(1, ids, output[:, self.txt:])], 1)
        return hook


def install(transformer, family, value) -> Tread | None:
    """Route `transformer` per the config value (None: nothing installed)."""
    routes = parse_routes(value, family.tread_blocks_count(transformer.config), family.name)
    if not routes:
        return None
    tread = Tread(routes, family.tread_blocks(transformer), family.tread_rope_rows, family.tread_routable)
    tread.install(transformer)
    return tread
