"""Aspect buckets: each image's training size and crop (planned once, deterministic), and the batch sampler.

Sizes (SimpleTuner's `resolution_type`): `pixel_area` = an area of resolution^2 pixels, `area` = resolution
megapixels (1.0 means 1024^2, as in SimpleTuner), `pixel` = the shorter edge is `resolution`. Both sides are
snapped to the family's alignment. The image is resized to cover the training size and the rest is cut away at
the `crop_style` position; random choices (crop position, `crop_aspect: random`) come from a generator seeded by
(seed, dataset id, file), so they are drawn once and a cache key stays stable.

Batches: every batch comes from one bucket (one dataset, one size); an epoch visits each sample (1 + repeats)
times; a bucket whose count is not a multiple of the batch size fills its last batch from its own start. The
sampler's state (epoch, cursor) is part of the training loop state.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..errors import GlanceError
from .images import Crop

# SimpleTuner maps these `area` values (megapixels) to exact square areas
AREA_ALIASES = {0.25: 512 ** 2, 0.5: 768 ** 2, 1.0: 1024 ** 2, 2.0: 1536 ** 2, 4.0: 2048 ** 2}


def snap(x: float, align: int) -> int:
    return max(align, round(x / align) * align)


def target_area(resolution: float, resolution_type: str) -> float:
    if resolution_type == "area":
        for mp, area in AREA_ALIASES.items():
            if abs(resolution - mp) < 0.05:
                return float(area)
        return resolution * 1e6
    return float(resolution) ** 2


def target_size(width: int, height: int, resolution: float, align: int) -> tuple[int, int]:
    """The seeds' simple backend: keep the aspect ratio, area about resolution^2, sides multiples of `align`."""
    scale = resolution / math.sqrt(width * height)
    return (max(align, round(width * scale / align) * align), max(align, round(height * scale / align) * align))


def scaled_size(width: int, height: int, resolution: float, resolution_type: str, align: int) -> tuple[int, int]:
    """Aspect ratio of the image kept, size by `resolution_type`."""
    if resolution_type == "pixel_area":
        return target_size(width, height, resolution, align)
    if resolution_type == "pixel":
        scale = resolution / min(width, height)
    else:
        scale = math.sqrt(target_area(resolution, resolution_type) / (width * height))
    return snap(width * scale, align), snap(height * scale, align)


def aspect_size(aspect: float, resolution: float, resolution_type: str, align: int) -> tuple[int, int]:
    """The size of a bucket of aspect ratio `aspect` (width / height)."""
    if resolution_type == "pixel":
        w, h = (resolution * aspect, resolution) if aspect >= 1 else (resolution, resolution / aspect)
    else:
        area = target_area(resolution, resolution_type)
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    return snap(w, align), snap(h, align)


def measure(size: tuple[int, int], resolution_type: str) -> float:
    """An image's size in the unit of `minimum_image_size` for this resolution_type."""
    w, h = size
    if resolution_type == "pixel":
        return min(w, h)
    if resolution_type == "area":
        return w * h / 1e6
    return math.sqrt(w * h)


def file_rng(seed: int, dataset_id: str, key: str) -> random.Random:
    """Per-file generator: the same draws for a file whatever the other files are (str seeds hash with SHA-512)."""
    return random.Random(f"glancetune:{seed}:{dataset_id}:{key}")


def plan_target(spec, size: tuple[int, int], align: int, rng: random.Random) -> tuple[int, int]:
    """The training size of an image of oriented `size` in dataset `spec` (a DatasetSpec)."""
    w, h = size
    if spec.crop and spec.crop_aspect == "square":
        side = spec.resolution if spec.resolution_type != "area" else math.sqrt(target_area(spec.resolution, "area"))
        return snap(side, align), snap(side, align)
    if spec.crop and spec.crop_aspect in ("closest", "random"):
        aspects = [a for a, _ in spec.crop_aspect_buckets]
        if spec.crop_aspect == "closest":
            aspect = min(aspects, key=lambda a: abs(a - w / h))
        else:
            weights = [wt for _, wt in spec.crop_aspect_buckets]
            aspect = rng.choices(aspects, weights=None if weights[0] is None else weights)[0]
        return aspect_size(aspect, spec.resolution, spec.resolution_type, align)
    return scaled_size(w, h, spec.resolution, spec.resolution_type, align)


def plan_crop(spec, size: tuple[int, int], target: tuple[int, int], rng: random.Random) -> Crop:
    """Resize to cover `target` (or to `target_downsample_size` for images above `maximum_image_size`), then cut
    `target` at the crop_style position: center, corner (top-left, as SimpleTuner) or random (drawn from rng)."""
    w, h = size
    tw, th = target
    scale = max(tw / w, th / h)
    if spec.target_downsample_size is not None and measure(size, spec.resolution_type) > spec.maximum_image_size:
        down = scaled_size(w, h, spec.target_downsample_size, spec.resolution_type, 1)
        scale = max(scale, down[0] / w)
    rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))
    style = spec.crop_style if spec.crop else "center"
    if style == "corner":
        left, top = 0, 0
    elif style == "random":
        left, top = rng.randint(0, rw - tw), rng.randint(0, rh - th)
    else:
        left, top = (rw - tw) // 2, (rh - th) // 2
    return Crop(source=(w, h), resize=(rw, rh), box=(left, top, left + tw, top + th))


def strict_crop(target: Crop, size: tuple[int, int]) -> Crop:
    """reference_strict: the conditioning image gets the target's resize and box (same pixels alignment)."""
    return Crop(source=tuple(size), resize=target.resize, box=target.box)


@dataclass
class Batch:
    indices: list[int]  # into the sample list; all from one bucket
    conditioning: int | None = None  # conditioning_multidataset_sampling=random: which linked dataset


class BatchSampler:
    """Epochs of bucket-pure batches. groups: sample indices per bucket, repeats already expanded.

    Epoch e is rebuilt from (seed, e) alone, so the state is just (epoch, cursor). A dataset of one image gives
    [0] * batch_size every step without drawing any random number.
    """

    def __init__(self, groups: list[list[int]], batch_size: int, seed: int, shuffle: bool = True,
                 choices: list[int] | None = None):
        if not groups or not all(groups):
            raise ValueError("BatchSampler: every bucket needs at least one sample")
        self.groups, self.batch_size, self.seed, self.shuffle = groups, batch_size, seed, shuffle
        self.choices = choices or [0] * len(groups)  # linked conditioning datasets per group (random mode)
        self.epoch, self.cursor = 0, 0
        self._batches: list[Batch] | None = None

    def epoch_batches(self, epoch: int) -> list[Batch]:
        rng = random.Random(f"glancetune-batches:{self.seed}:{epoch}")
        bs, batches = self.batch_size, []
        for group, n_choices in zip(self.groups, self.choices):
            order = list(group)
            if self.shuffle and len(set(order)) > 1:
                rng.shuffle(order)
            need = -len(order) % bs
            order += [order[i % len(order)] for i in range(need)]
            for i in range(0, len(order), bs):
                pick = rng.randrange(n_choices) if n_choices > 1 else None
                batches.append(Batch(order[i:i + bs], pick))
        if self.shuffle and len(batches) > 1:
            rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(-(-len(g) // self.batch_size) for g in self.groups)

    def next(self) -> Batch:
        if self._batches is None:
            self._batches = self.epoch_batches(self.epoch)
        if self.cursor >= len(self._batches):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._batches = self.epoch_batches(self.epoch)
        batch = self._batches[self.cursor]
        self.cursor += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "batch_size": self.batch_size, "seed": self.seed,
                "groups": [len(g) for g in self.groups]}

    def load_state_dict(self, d: dict) -> None:
        mine = self.state_dict()
        for key in ("batch_size", "seed", "groups"):
            if d[key] != mine[key]:
                raise GlanceError(f"resume: the batch sampler was saved with {key} {d[key]!r}, now {mine[key]!r} "
                                  "(the dataset or batch settings changed)")
        self.epoch, self.cursor, self._batches = int(d["epoch"]), int(d["cursor"]), None
