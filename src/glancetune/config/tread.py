"""The `tread_config` key: TREAD's routes (the fraction of image tokens routed around a window of blocks), checked
for structure by the schema and resolved against a family's block count by the plan; engine/tread.py routes them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import GlanceError

KEY = "tread_config"


@dataclass(frozen=True)
class Route:
    ratio: float  # fraction of image tokens routed around the window
    start: int  # first block (inclusive, resolved)
    end: int  # last block (inclusive, resolved)


def check_structure(value) -> list[dict]:
    """The routes of a `tread_config` value, each with its three keys and a ratio in [0, 1); ValueError naming
    the part that is wrong (the config schema reports it under the key)."""
    routes = value.get("routes") if isinstance(value, dict) else None
    extra = sorted(set(value) - {"routes"}) if isinstance(value, dict) else []
    if not isinstance(routes, list) or not routes or extra:
        raise ValueError(f"expected {{\"routes\": [{{\"selection_ratio\", \"start_layer_idx\", "
                         f"\"end_layer_idx\"}}, ...]}} (got {value!r})")
    for i, r in enumerate(routes):
        if not isinstance(r, dict) or set(r) != {"selection_ratio", "start_layer_idx", "end_layer_idx"}:
            raise ValueError(f"routes[{i}] needs exactly selection_ratio, start_layer_idx, end_layer_idx (got {r!r})")
        ratio = r["selection_ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"routes[{i}].selection_ratio is the fraction of tokens routed around, in [0, 1) "
                             f"(got {ratio!r})")
        for name in ("start_layer_idx", "end_layer_idx"):
            if isinstance(r[name], bool) or not isinstance(r[name], int):
                raise ValueError(f"routes[{i}].{name} must be an integer (got {r[name]!r})")
    return routes


def parse_routes(value, n_blocks: int | None, family: str) -> list[Route]:
    """Routes from the config value (None: no TREAD), indices resolved against the family's `n_blocks` blocks;
    one-line errors naming the key."""
    if not value:
        return []
    if n_blocks is None:
        raise GlanceError(f"{KEY}: TREAD is built for FLUX.1, FLUX.2, SD3, Qwen-Image and Qwen-Image-Edit so far, "
                          f"not for {family}; remove {KEY}")
    try:
        routes = check_structure(value)
    except ValueError as e:
        raise GlanceError(f"{KEY}: {e}") from None
    out: list[Route] = []
    for i, r in enumerate(routes):
        where, (a, b) = f"{KEY}.routes[{i}]", (r["start_layer_idx"], r["end_layer_idx"])
        for name, idx in (("start_layer_idx", a), ("end_layer_idx", b)):
            if not -n_blocks <= idx < n_blocks:
                raise GlanceError(f"{where}.{name}: a block index in [{-n_blocks}, {n_blocks - 1}] for this "
                                  f"{family} transformer's {n_blocks} blocks (got {idx!r})")
        if a % n_blocks > b % n_blocks:
            raise GlanceError(f"{where}: start_layer_idx {a} comes after end_layer_idx {b} (blocks {a % n_blocks} > "
                              f"{b % n_blocks})")
        out.append(Route(float(r["selection_ratio"]), a % n_blocks, b % n_blocks))
    ordered = sorted(out, key=lambda r: r.start)
    for x, y in zip(ordered, ordered[1:]):
        if y.start <= x.end:
            raise GlanceError(f"{KEY}: routes overlap (blocks {x.start}-{x.end} and {y.start}-{y.end})")
    return ordered
