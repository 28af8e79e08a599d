"""Training samples without pixels, and the data plan: datasets -> discovered files -> sized, bucketed samples.

A `Sample` holds paths, the caption, and an exact crop description; `load_pixels()` decodes on demand, so a
dataset of hundreds of 1024^2 images costs no memory until it is encoded (or read from a cache keyed by
`crop.to_dict()`). Conditioning images (edit / reference pairs) hang off their target sample.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GlanceError
from .backends import DatasetSpec
from .buckets import file_rng, measure, plan_crop, plan_target, snap, strict_crop, target_area
from .discovery import Found, Problems, discover, pair_by_key
from .images import Crop, load_pixels

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_UPSCALE = 2.0  # above this an image is upscaled enough to look soft: a notice
MAX_ASPECT = 4.0  # training sizes more elongated than 4:1: a notice, or an error when a side is below MIN_SIDE
MIN_SIDE = 64
SHOWN = 5  # per-file notices of one kind per dataset; the rest are counted in one line


@dataclass(frozen=True)
class ImageRef:
    image_path: Path
    key: str  # path in its dataset folder without extension: pairs targets and conditioning images
    dataset_id: str
    crop: Crop
    cache_dir_vae: str | None

    @property
    def width(self) -> int:
        return self.crop.size[0]

    @property
    def height(self) -> int:
        return self.crop.size[1]

    @property
    def target(self) -> tuple[int, int]:
        return self.crop.size

    def load_pixels(self) -> torch.Tensor:
        """[1, 3, H, W] in [-1, 1], decoded now (nothing is kept)."""
        return load_pixels(self.image_path, self.crop)



@dataclass(frozen=True)
class ConditioningImage(ImageRef):
    conditioning_type: str = "reference_strict"


@dataclass(frozen=True)
class Sample(ImageRef):
    caption: str = ""
    caption_source: str = ""  # caption file name | "filename" | "instance_prompt" (+ " + instance_prompt")
    bucket: str = ""  # "WxH" (+ "|WxH,..." of loose conditioning images): batches never mix buckets
    repeats: int = 0
    conditioning: tuple[ConditioningImage, ...] = ()
    text_embeds: str | None = None  # id of the text_embeds dataset whose cache holds this caption
    text_cache_dir: str | None = None
    control_path: Path | None = None  # edit models: the control (source) image the target is made from

    @property
    def control(self):
        """The control image as opened (RGB PIL, EXIF orientation, alpha flattened; the pipeline sizes it), or None."""
        from .images import open_image

        return None if self.control_path is None else open_image(self.control_path)


@dataclass
class DataPlan:
    samples: list[Sample]
    datasets: list[DatasetSpec]
    groups: list[list[int]]  # sample indices per (dataset, bucket), repeats expanded: the batch sampler's input
    group_keys: list[tuple[str, str]]
    shuffle: bool
    excluded: list[tuple[Path, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def primary_size(self) -> tuple[int, int]:
        """The bucket with the most samples (ties: the first in sample order): the size the ladder is cut at."""
        counts = Counter(s.target for s in self.samples)
        return max(counts, key=lambda size: (counts[size], -next(i for i, s in enumerate(self.samples)
                                                                 if s.target == size)))

    def conditioning_choices(self) -> list[int]:
        """Per group: how many linked conditioning datasets a `random` draw picks one from."""
        return [len(self.samples[g[0]].conditioning) for g in self.groups]

    def describe(self, batch_size: int, show: int = 5) -> list[str]:
        """The data plan for --dry-run: datasets, buckets (size -> count), repeats, caption sources, conditioning."""
        per_epoch = sum(len(g) for g in self.groups)
        n_batches = sum(-(-len(g) // batch_size) for g in self.groups)
        lines = [f"data: {len(self.samples)} image(s) in {sum(d.dataset_type == 'image' for d in self.datasets)} "
                 f"dataset(s); {per_epoch} sample(s) per epoch with repeats, {n_batches} batch(es) of {batch_size} per "
                 f"epoch, each from one bucket" + ("" if self.shuffle else " (shuffle off)")]
        for d in self.datasets:
            mine = [s for s in self.samples if s.dataset_id == d.id]
            if d.dataset_type == "text_embeds":
                lines.append(f"  text_embeds {d.id!r}: cache_dir {d.cache_dir}" + (" (default)" if d.default else ""))
                continue
            if d.dataset_type == "conditioning":
                lines.append(f"  conditioning {d.id!r} ({d.conditioning_type}): {d.root}")
                continue
            crop = f"crop {d.crop_style}/{d.crop_aspect}" if d.crop else "no crop (aspect kept)"
            lines.append(f"  dataset {d.id!r} ({d.backend}) {d.root}: {len(mine)} image(s), "
                         f"{'no repeats' if not d.repeats else f'repeats {d.repeats} (seen {d.repeats + 1}x)'}, "
                         f"resolution {d.resolution:g} {d.resolution_type}, {crop}, captions {d.caption_strategy}"
                         + (f", cache_dir_vae {d.cache_dir_vae}" if d.cache_dir_vae else ""))
            counts = Counter(s.bucket for s in mine)
            lines.append("    buckets: " + ", ".join(f"{b} -> {n}" for b, n in sorted(counts.items())))
            sources = Counter(s.caption_source if s.caption_source in ("filename", "instance_prompt") else
                              "caption file" for s in mine)
            lines.append("    captions: " + ", ".join(f"{n} from {src}" for src, n in sources.items()))
            for s in mine[:show]:
                text = s.caption if len(s.caption) <= 60 else s.caption[:57] + "..."
                cond = "".join(f"; {c.conditioning_type} {c.image_path.name} ({c.width}x{c.height})"
                               for c in s.conditioning)
                lines.append(f"      {s.key} {s.width}x{s.height} <- {s.caption_source}: {text!r}{cond}")
            if len(mine) > show:
                lines.append(f"      ... and {len(mine) - show} more")
        if self.excluded:
            lines.append(f"  excluded: {len(self.excluded)} image(s) by the size / aspect filters (notice above)")
        return lines


def _caption(spec: DatasetSpec, f: Found) -> tuple[str, str]:
    if spec.prepend_instance_prompt and spec.caption_strategy != "instanceprompt":
        return f"{spec.instance_prompt} {f.caption}", f"{f.caption_source} + instance_prompt"
    return f.caption, f.caption_source


def _filters(spec: DatasetSpec, size: tuple[int, int]) -> str | None:
    """Why SimpleTuner's size / aspect filters exclude this image (None: kept)."""
    w, h = size
    if spec.minimum_image_size and measure(size, spec.resolution_type) < spec.minimum_image_size:
        return f"below minimum_image_size {spec.minimum_image_size:g} ({spec.resolution_type})"
    if spec.minimum_aspect_ratio and w / h < spec.minimum_aspect_ratio:
        return f"aspect {w / h:.3g} below minimum_aspect_ratio {spec.minimum_aspect_ratio:g}"
    if spec.maximum_aspect_ratio and w / h > spec.maximum_aspect_ratio:
        return f"aspect {w / h:.3g} above maximum_aspect_ratio {spec.maximum_aspect_ratio:g}"
    return None


def resolution_notice(spec: DatasetSpec, align: int) -> str | None:
    """The dataset's resolution as a square side, when it is not a multiple of the model's alignment."""
    if spec.dataset_type == "text_embeds":
        return None
    side = math.sqrt(target_area(spec.resolution, "area")) if spec.resolution_type == "area" else spec.resolution
    if abs(side - round(side)) < 1e-6 and round(side) % align == 0:
        return None
    return (f"{spec.where}: resolution {spec.resolution:g} ({spec.resolution_type}) is not a multiple of {align}, "
            f"the model's alignment: training sides are snapped to multiples of {align} ({side:g} -> "
            f"{snap(side, align)} for a square image)")


def _sizing(f: Found, crop: Crop, problems: Problems, notes: dict[str, list[str]]) -> bool:
    """Upscaled more than 2x, or more elongated than 4:1: a notice; 4:1 with a side below 64 px: a problem."""
    (sw, sh), (rw, rh), (w, h) = crop.source, crop.resize, crop.size
    scale = max(rw / sw, rh / sh)
    if scale > MAX_UPSCALE:
        notes["upscaled"].append(f"{f.image}: upscaled {scale:.2f}x ({sw}x{sh} -> {rw}x{rh}) to reach its training "
                                 f"size {w}x{h}")
    aspect = max(w, h) / min(w, h)
    if aspect > MAX_ASPECT:
        if min(w, h) < MIN_SIDE:
            problems.add(f.image, "extreme_aspect", f"training size {w}x{h} (aspect {aspect:.3g}:1) has a side below "
                         f"{MIN_SIDE} px; crop the image, raise resolution, or set crop with crop_aspect")
            return False
        notes["extreme aspect"].append(f"{f.image}: extreme aspect ratio {aspect:.3g}:1 (training size {w}x{h})")
    return True


def _flush(spec: DatasetSpec, notes: dict[str, list[str]], notices: list[str]) -> None:
    for kind, lines in notes.items():
        notices.extend(lines[:SHOWN])
        if len(lines) > SHOWN:
            notices.append(f"{spec.where}: ... and {len(lines) - SHOWN} more image(s) {kind} (see above)")


def discover_dataset(spec: DatasetSpec, problems: Problems, notices: list[str]) -> list[Found]:
    captions = spec.caption_strategy if spec.dataset_type == "image" else None
    if spec.dataset_type == "image" and captions == "filename" and not spec.caption_strategy_given:
        pattern = f"*{spec.caption_extension}"
        texts = list(spec.root.rglob(pattern) if spec.recursive else spec.root.glob(pattern)) \
            if spec.root.is_dir() else []
        if texts:
            notices.append(f"{spec.where}: caption_strategy not set, so captions come from file names "
                                f"(SimpleTuner's default) although {len(texts)} {spec.caption_extension} file(s) "
                                "exist; set \"caption_strategy\": \"textfile\" to use them")
    return discover(spec.root, problems, captions=captions, caption_ext=spec.caption_extension,
                    instance_prompt=spec.instance_prompt, recursive=spec.recursive, what=spec.root_key)


def _conditioning(target: Found, crop: Crop, cond: DatasetSpec, partner: Found, align: int, seed: int,
                  problems: Problems) -> ConditioningImage | None:
    """reference_strict: the target's resize and box (a partner of the same aspect ratio at another resolution is
    scaled onto the same grid, so the crops cover the same content). reference_loose: sized by its own dataset."""
    if cond.conditioning_type == "reference_strict":
        (tw, th), (cw, ch) = target.size, partner.size
        if abs(tw / th - cw / ch) > 0.01 * tw / th:
            problems.add(partner.image, "aspect_mismatch", f"reference_strict image is {cw}x{ch} but its target "
                         f"{target.image.name} is {tw}x{th} (different aspect ratio; use reference_loose)")
            return None
        ccrop = strict_crop(crop, partner.size)
    else:
        rng = file_rng(seed, cond.id, partner.key)
        ccrop = plan_crop(cond, partner.size, plan_target(cond, partner.size, align, rng), rng)
    return ConditioningImage(partner.image, partner.key, cond.id, ccrop, cond.cache_dir_vae, cond.conditioning_type)


def _sample(spec: DatasetSpec, f: Found, partners: dict, by_id: dict, align: int, seed: int, problems: Problems,
            notes: dict[str, list[str]]) -> Sample | None:
    """One kept image: its crop, conditioning images and bucket; None when a problem was reported (collected)."""
    rng = file_rng(seed, spec.id, f.key)
    crop = plan_crop(spec, f.size, plan_target(spec, f.size, align, rng), rng)
    if not _sizing(f, crop, problems, notes):
        return None
    conds = []
    for cid in spec.conditioning_data:
        if f.key in partners[cid]:
            c = _conditioning(f, crop, by_id[cid], partners[cid][f.key], align, seed, problems)
            if c is not None:
                conds.append(c)
    if len(conds) != len(spec.conditioning_data):
        return None  # reported above (only reachable when problems are collected)
    bucket = f"{crop.size[0]}x{crop.size[1]}"
    loose = [c for c in conds if c.conditioning_type == "reference_loose"]
    if loose:
        bucket += "|" + ",".join(f"{c.width}x{c.height}" for c in loose)
    caption, source = _caption(spec, f)
    text_dir = by_id[spec.text_embeds].cache_dir if spec.text_embeds else None
    return Sample(f.image, f.key, spec.id, crop, spec.cache_dir_vae, caption, source, bucket, spec.repeats,
                  tuple(conds), spec.text_embeds, text_dir)


def build_plan(specs: list[DatasetSpec], align: int, seed: int = 0, problems: Problems | None = None) -> DataPlan:
    """Discover, filter, size and bucket every image dataset, pairing conditioning images by file name.

    With the default `problems` the first problem raises a GlanceError; a collecting `Problems` (the validator)
    gets every problem and the plan of what remained.
    """
    problems = Problems() if problems is None else problems
    by_id = {s.id: s for s in specs}
    notices = [n for s in specs for n in s.notices]
    notices += [n for n in (resolution_notice(s, align) for s in specs) if n]
    found = {s.id: discover_dataset(s, problems, notices) for s in specs
             if s.dataset_type in ("image", "conditioning")}
    samples: list[Sample] = []
    excluded: list[tuple[Path, str]] = []
    for spec in (s for s in specs if s.dataset_type == "image"):
        targets = found[spec.id]
        partners = {cid: pair_by_key(targets, found[cid], problems, partner_dir=by_id[cid].root,
                                     partner_name=f"conditioning ({cid})") for cid in spec.conditioning_data}
        kept, first_excluded = 0, len(excluded)
        notes: dict[str, list[str]] = {"upscaled": [], "extreme aspect": []}
        for f in targets:
            if not f.ok:
                continue
            why = _filters(spec, f.size)
            if why:
                excluded.append((f.image, f"{f.size[0]}x{f.size[1]}, {why}"))
                continue
            sample = _sample(spec, f, partners, by_id, align, seed, problems, notes)
            if sample is not None:
                samples.append(sample)
                kept += 1
        _flush(spec, notes, notices)
        if kept == 0 and len(excluded) > first_excluded:
            problems.add(spec.root, "no_images", f"every image of dataset {spec.id!r} was excluded by the size / "
                         f"aspect filters (e.g. {excluded[-1][0].name}: {excluded[-1][1]})")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.dataset_id, s.bucket), []).extend([i] * (s.repeats + 1))
    image_specs = [s for s in specs if s.dataset_type == "image"]
    shuffles = {s.shuffle for s in image_specs}
    if len(shuffles) > 1:
        raise GlanceError(f"{image_specs[0].where}: shuffle differs between datasets; set the same value on all")
    if excluded:
        shown = ", ".join(f"{p.name} ({why})" for p, why in excluded[:3])
        notices.append(f"{len(excluded)} image(s) excluded by the size / aspect filters: {shown}"
                       + (f" and {len(excluded) - 3} more" if len(excluded) > 3 else ""))
    return DataPlan(samples, specs, list(groups.values()), list(groups), shuffles.pop(), excluded, notices)


def load_plan(specs: list[DatasetSpec], align: int, seed: int = 0) -> DataPlan:
    """The loader: the plan, with its notices logged; raises on the first problem."""
    plan = build_plan(specs, align, seed)
    for n in plan.notices:
        log.info("notice: %s", n)
    return plan
