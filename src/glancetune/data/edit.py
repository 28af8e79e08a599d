"""Edit pairs: the official Glance layout for edit models, selected by the folder's shape.

A `simple` backend whose `image_dir` holds the two subfolders `image/` and `control/` is an edit dataset:

    image_dir/image/NAME.png + image_dir/image/NAME.txt   target image and its caption (the edit instruction)
    image_dir/control/NAME.jpg                             the control (source) image, same basename, any extension

(`images/` is accepted for `image/`: the official Glance / flymyai README spells it so.)

Discovery is one function (`discover_edit_pairs`) on top of the plain loader's `discover_pairs`. Targets are sized
for training like any sample (`load_image`); control images are kept as opened (`open_image`: EXIF orientation,
alpha flattened, RGB) because the edit pipeline resizes them itself, and training hands them to the same pipeline
code that `generate --image` uses.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import GlanceError
from .dataset import IMAGE_EXTENSIONS, discover_pairs, open_image
from .samples import DataPlan, Sample, load_plan

IMAGE_SUBDIRS, CONTROL_SUBDIR = ("image", "images"), "control"


@dataclass(frozen=True)
class EditSample(Sample):
    control_path: Path | None = None

    @property
    def control(self):
        """The control image as opened (RGB PIL, EXIF orientation, alpha flattened): the pipeline sizes it."""
        return open_image(self.control_path)


def target_dir(root: Path) -> Path | None:
    """root/image (or root/images); both at once is ambiguous."""
    found = [root / d for d in IMAGE_SUBDIRS if (root / d).is_dir()]
    if len(found) > 1:
        raise GlanceError(f"{root}: holds both image/ and images/; keep the targets in one of them")
    return found[0] if found else None


def is_edit_layout(root: Path) -> bool:
    return (root / CONTROL_SUBDIR).is_dir() and target_dir(root) is not None


def discover_edit_pairs(root: Path, caption_ext: str = ".txt") -> list[tuple[Path, Path, Path]]:
    """(target image, caption, control image) triples of an edit dataset; anything unpaired is an error naming it."""
    if not root.is_dir():
        raise GlanceError(f"{root}: image_dir does not exist")
    targets_dir = target_dir(root)
    for sub, ok in (("image", targets_dir is not None), (CONTROL_SUBDIR, (root / CONTROL_SUBDIR).is_dir())):
        if not ok:
            raise GlanceError(f"{root}: an edit dataset needs the subfolders image/ (targets + captions) and "
                              f"{CONTROL_SUBDIR}/ (control images); {sub}/ is missing")
    pairs = discover_pairs(targets_dir, caption_ext)
    controls: dict[str, Path] = {}
    for f in sorted((root / CONTROL_SUBDIR).iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
            if f.stem in controls:
                raise GlanceError(f"{f}: duplicate basename (also {controls[f.stem].name}); keep one control image "
                                  "per target")
            controls[f.stem] = f
    targets = {img.stem for img, _ in pairs}
    for stem, f in controls.items():
        if stem not in targets:
            raise GlanceError(f"{f}: control image without a target image in {targets_dir}")
    out = []
    for img, cap in pairs:
        if img.stem not in controls:
            raise GlanceError(f"{img}: no control image {CONTROL_SUBDIR}/{img.stem}.* "
                              f"({'/'.join(IMAGE_EXTENSIONS)})")
        out.append((img, cap, controls[img.stem]))
    return out


def load_job_plan(specs: list, align: int, seed: int, edit: bool) -> DataPlan:
    """The data plan a job trains on: plain image/caption samples, or edit triples when the model is an edit model.

    The layout must match the model: an edit model needs image/ + control/ in every dataset folder (or, as in
    SimpleTuner, every image dataset linked to a conditioning dataset with `conditioning_data`), and a folder laid
    out as image/ + control/ is refused for a text-to-image model (its control images would be ignored)."""
    images = [s for s in specs if s.dataset_type == "image"]
    if not edit:
        for spec in images:
            if spec.root is not None and is_edit_layout(spec.root):
                raise GlanceError(f"{spec.root}: holds {target_dir(spec.root).name}/ and {CONTROL_SUBDIR}/ (an edit "
                                  "dataset), but the model is not an edit model (e.g. model_family qwen_image, "
                                  "model_flavour edit)")
        return load_plan(specs, align, seed)
    if all(s.conditioning_data for s in images):
        # SimpleTuner's way: image datasets linked to a conditioning dataset (`conditioning_data`); its paired
        # file is the control image (the edit pipeline sizes it itself, so its planned crop is not used)
        plan = load_plan(specs, align, seed)
        controls = {s.image_path: s.conditioning[0].image_path for s in plan.samples}
    else:
        controls = {}
        for spec in images:
            controls.update({img: ctl for img, _, ctl in discover_edit_pairs(spec.root, spec.caption_extension)})
        plan = load_plan([replace(s, root=target_dir(s.root)) if s in images else s for s in specs], align, seed)
    samples = [EditSample(**{f.name: getattr(s, f.name) for f in fields(s)}, control_path=controls[s.image_path])
               for s in plan.samples]
    return replace(plan, samples=samples)
