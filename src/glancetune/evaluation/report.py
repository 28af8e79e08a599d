"""`glancetune eval`'s report: eval.json (every number), eval.md (the matrix, win-rates, verdict, alarms), grid.png
and every image under images/, written into a temporary sibling folder and renamed into place (an earlier report
is replaced; a folder holding anything else is refused)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import GlanceError
from ..export.files import replace_folder
from .metrics import BOOTSTRAP, MS_MIN_SIDE

REPORT = "eval.json"


def _json(x):
    """JSON has no inf / NaN: such values become null."""
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def matrix(report: dict) -> list[str]:
    lines = ["| sampler | passes / image (NFE) | s / image (median) | PSNR (dB) | SSIM | MS-SSIM | latent MSE | "
             "alarms |", "|---|---|---|---|---|---|---|---|"]
    for n, s in report["samplers"].items():
        if n == report["reference"]:
            cells = ["reference"] + [""] * 4
        else:
            cells = ["identical" if s.get("psnr_mean") is None else f"{s['psnr_mean']:.2f}",
                     _num(s.get("ssim_mean"), ".4f"), _num(s.get("ms_ssim_mean"), ".4f"),
                     _num(s.get("latent_mse_mean"), ".3g"), str(s.get("alarms", 0))]
        lines.append(f"| {n} | {s['passes_per_image']:g} | {s['seconds_median']:.3f} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    lines = [f"# glancetune eval: {report['run']}", "",
             f"base model `{report['base_model']}`, {report['size'][0]}x{report['size'][1]}, guidance "
             f"{report['guidance']}, {report['prompts']} prompts x {len(report['seeds'])} seeds = "
             f"{report['pairs']} pairs; reference: **{report['reference']}** (same initial noise for every sampler)",
             "", *matrix(report), ""]
    if min(report["size"]) <= MS_MIN_SIDE:
        lines += [f"MS-SSIM: not computed below {MS_MIN_SIDE + 1} px (its 5 scales need the room).", ""]
    lines += ["Alarms (no reference: scikit-image's noise estimate and blur effect, against the reference image's): "
              "images flagged per sampler.", "",
              "Win-rate of Glance (closer to the reference than the other sampler, per pair; 95% bootstrap "
              f"interval over pairs, {BOOTSTRAP} resamples):", ""]
    for k, v in report["win_rate"].items():
        for m, r in v.items():
            lines.append(f"- {k.replace('_', ' ')}, {m.upper()}: {r['rate']:.3f} [{r['ci95'][0]:.3f}, "
                         f"{r['ci95'][1]:.3f}]")
    lines += ["", f"Verdict: {report['verdict']}."]
    if report.get("clip_model"):
        lines += ["", f"CLIP score (`{report['clip_model']}`, 100 x cosine of image and prompt embeddings, mean):", ""]
        lines += [f"- {n}: {s['clip_score_mean']:.3f}" for n, s in report["samplers"].items()]
        lines += ["", "LPIPS: not computed (no model is downloaded by glancetune eval)."]
    else:
        lines += ["", "LPIPS / CLIP score: not computed (no model is downloaded by glancetune eval; "
                  "--clip-model names a local CLIP model)."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, pairs: list[dict], output: Path, grid_rows: int) -> None:
    """All files into a temporary sibling folder, then renamed into `output` (an earlier report is replaced)."""
    from ..sampling.compare import grid
    from ..sampling.images import save_images

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    try:
        names = list(pairs[0]["images"]) if pairs else []
        for pr in pairs:
            for n, im in pr["images"].items():
                info = {"prompt": pr["text"], "seed": pr["seed"], "image": n, "base_model": report["base_model"],
                        "ladder": report["ladder"], "guidance": report["guidance"], "size": report["size"],
                        "step": report["step"],
                        **({"control_image": report["control_image"]} if report["control_image"] else {})}
                save_images([im], tmp / "images" / f"{pr['prompt']}-{pr['seed']}-{n}.png", info)
        shown = pairs[:grid_rows]
        save_images([grid([[pr["images"][n] for n in names] for pr in shown], names,
                          [f"{pr['prompt']}-{pr['seed']}" for pr in shown])], tmp / "grid.png", {"grid": names})
        (tmp / "eval.md").write_text(markdown(report), encoding="utf-8")
        (tmp / REPORT).write_text(json.dumps(_json(report), indent=2) + "\n", encoding="utf-8")
        replace_folder(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / REPORT).is_file())):
        raise GlanceError(f"--output: {output} exists and is not an earlier eval report; choose another folder")
    from ..export.files import nearest_existing

    base = nearest_existing(output.parent)
    if not base.is_dir() or not os.access(base, os.W_OK):
        raise GlanceError(f"--output: cannot write in {base}")
