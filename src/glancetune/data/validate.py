"""`glancetune validate-dataset`: every problem of a dataset folder (or a dataloader JSON) in one report.

It runs the loader's own discovery (discovery.discover / pair_by_key, samples.build_plan) with a collecting
`Problems`, so the validator and the loader cannot disagree: what the loader would stop on, the validator lists.
Exit status 0 when clean, 1 when problems were found (2 for bad arguments, like every command).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import GlanceError
from .discovery import KINDS, Found, Problems, discover, discover_edit, looks_like_edit

log = logging.getLogger(__name__)


def _too_small(found: list[Found], resolution: int, problems: Problems) -> None:
    for f in found:
        if f.size is not None and f.size[0] * f.size[1] < resolution ** 2:
            problems.add(f.image, "too_small", f"{f.size[0]}x{f.size[1]} is smaller than resolution {resolution} "
                         f"(area below {resolution}^2: it would be upscaled)")


def validate_folder(path: Path, problems: Problems, resolution: int | None = None,
                    caption_ext: str = ".txt") -> dict[str, int]:
    """A folder of image + caption pairs, or the edit layout (image/ or images/ with captions + control/ with the
    sources): the loader's own discovery (`discover_edit` is what an edit model's loader calls)."""
    path = Path(path)
    if looks_like_edit(path):
        ed = discover_edit(path, problems, captions="textfile", caption_ext=caption_ext, what="dataset folder")
        found = ed.targets + ed.controls
        name = ed.targets_dir.name if ed.targets_dir is not None else "image"
        counts = {f"target images ({name}/)": len(ed.targets), "control images (control/)": len(ed.controls)}
    else:
        found = discover(path, problems, captions="textfile", caption_ext=caption_ext, what="dataset folder")
        counts = {"images": len(found)}
    counts["captions read"] = sum(1 for f in found if f.caption is not None)
    if resolution is not None:
        _too_small(found, resolution, problems)
    return counts


def validate_config(path: Path, problems: Problems) -> dict[str, int]:
    """Every dataset of a dataloader JSON, exactly as `train` / `glance` would read it."""
    from .backends import load_backends
    from .samples import build_plan

    specs = load_backends(path)  # JSON / key errors stay errors (exit 2): the file itself is wrong
    plan = build_plan(specs, align=16, problems=problems)
    for n in plan.notices:
        log.info("notice: %s", n)
    return {"datasets": sum(s.dataset_type != "text_embeds" for s in specs), "training images": len(plan.samples),
            "conditioning images": sum(len(s.conditioning) for s in plan.samples),
            "excluded by size / aspect filters": len(plan.excluded)}


def report(problems: Problems, counts: dict[str, int], resolution: int | None, mode: str) -> str:
    """Problem lines, then the summary table (rows that cannot occur in this mode are left out)."""
    labels = dict(KINDS)
    if resolution is not None:
        labels["too_small"] = f"image smaller than {resolution}^2"
    else:
        del labels["too_small"]
    if mode == "edit":
        labels.update(no_partner="target without control image", unmatched_partner="control image without target")
    if mode != "config":
        del labels["aspect_mismatch"], labels["extreme_aspect"]
    if mode != "edit":
        del labels["edit_layout"]
    if mode == "folder":
        del labels["no_partner"], labels["unmatched_partner"]
    targets = next((k[len("target images ("):-1] for k in counts if k.startswith("target images (")), "image/")
    lines = [f"layout: {f'edit ({targets} + control/)' if mode == 'edit' else mode}"]
    if problems.items:
        lines.append(f"problems ({len(problems.items)}):")
        lines += [f"  {p}" for p in problems.items]
        lines.append("")
    width = max(len(k) for k in list(labels.values()) + list(counts)) + 2
    lines.append(f"{'check':<{width}}{'count':>7}")
    for k, n in counts.items():
        lines.append(f"{k:<{width}}{n:>7}")
    for kind, label in labels.items():
        lines.append(f"{label:<{width}}{problems.count(kind):>7}")
    lines.append("")
    lines.append(f"result: {len(problems.items)} problem(s) found" if problems.items else "result: clean")
    return "\n".join(lines)


def run(path: str | None, config: str | None, resolution: int | None, caption_ext: str) -> int:
    if (path is None) == (config is None):
        raise GlanceError("validate-dataset: give --path DIR or --data-backend-config FILE")
    if resolution is not None and resolution <= 0:
        raise GlanceError(f"--resolution: must be a positive number of pixels, got {resolution}")
    if config is not None and resolution is not None:
        raise GlanceError("--resolution: applies to --path (a dataloader JSON gives each dataset's resolution)")
    if not caption_ext.startswith(".") or len(caption_ext) < 2:
        raise GlanceError(f"--caption-extension: expected an extension like .txt, got {caption_ext!r}")
    problems = Problems(collect=True)
    if config is not None:
        mode, counts = "config", validate_config(Path(config), problems)
    else:
        counts = validate_folder(Path(path), problems, resolution, caption_ext)
        mode = "edit" if any(k.startswith("control") for k in counts) else "folder"
    print(report(problems, counts, resolution, mode))
    return 1 if problems.items else 0


def add_parser(sub) -> None:
    v = sub.add_parser("validate-dataset", help="list every problem of a dataset (exit 0 clean, 1 problems found)")
    v.add_argument("--path", help="folder of image + caption pairs (or image/ + control/ edit layout)")
    v.add_argument("--data-backend-config", help="dataloader JSON: check every dataset as train/glance read them")
    v.add_argument("--resolution", type=int, help="also report images with an area below RESOLUTION^2")
    v.add_argument("--caption-extension", default=".txt")
    v.set_defaults(handler=lambda args: run(args.path, args.data_backend_config, args.resolution,
                                            args.caption_extension), loads_models=False)
