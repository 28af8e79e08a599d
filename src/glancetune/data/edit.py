"""Edit pairs: the official Glance layout for edit models, selected by the folder's shape.

A `simple` backend whose `image_dir` holds the two subfolders `image/` and `control/` is an edit dataset:

    image_dir/image/NAME.png + image_dir/image/NAME.txt   target image and its caption (the edit instruction)
    image_dir/control/NAME.jpg                             the control (source) image, same basename, any extension

(`images/` is accepted for `image/`: the official Glance / flymyai README spells it so.)

Discovery is ONE function, `discovery.discover_edit`, used here and by `glancetune validate-dataset`, so the two
agree on every layout (image/, images/, both, a missing or extra control image). Targets are sized for training like
any sample (`load_image`); control images are kept as opened (`open_image`: EXIF orientation, alpha flattened,
RGB) because the edit pipeline resizes them itself, and training hands them to the same pipeline code that
`generate --image` uses.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import GlanceError
from .discovery import CONTROL_SUBDIR, IMAGE_SUBDIRS, Problems, discover_edit, target_dirs  # noqa: F401
from .samples import DataPlan, load_plan


def target_dir(root: Path) -> Path | None:
    """root/image (or root/images); both at once is ambiguous."""
    found = target_dirs(root)
    if len(found) > 1:
        raise GlanceError(f"{root}: holds both image/ and images/; keep the targets in one of them")
    return found[0] if found else None


def is_edit_layout(root: Path) -> bool:
    return (root / CONTROL_SUBDIR).is_dir() and target_dir(root) is not None


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
        controls, roots = {}, {}
        for spec in images:
            ed = discover_edit(spec.root, Problems(), captions=spec.caption_strategy,
                               caption_ext=spec.caption_extension, instance_prompt=spec.instance_prompt,
                               recursive=spec.recursive, what=spec.root_key)
            controls.update({t.image: ed.pairs[t.key].image for t in ed.targets})
            roots[spec.id] = ed.targets_dir
        plan = load_plan([replace(s, root=roots[s.id]) if s.id in roots else s for s in specs], align, seed)
    samples = [replace(s, control_path=controls[s.image_path]) for s in plan.samples]
    return replace(plan, samples=samples)
