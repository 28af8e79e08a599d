"""Score a `glancetune eval` report of the toy model with its judge (class / colour CNN, bench/toy/toy_data.py).

    python bench/toy/toy_score.py --report REPORT_DIR --toy TOY_DIR [--output REPORT_DIR/toy_score.json]

For every sampler of the report (base-50, base-10, base-10-ladder, glance): the judge's class and colour accuracy
against the caption's labels (TOY_DIR/labels.json, prompt name -> [class, colour]) with a 95% normal interval, and
the mean PSNR to the reference from eval.json. Pixel metrics alone mislead here: an image can be far from base-50
in PSNR and still show the right garment in the right colour, or close and wrong.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_data as td  # noqa: E402


def _mean_ci(xs: list[float]) -> list[float]:
    a = np.asarray(xs, dtype=np.float64)
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return [round(float(a.mean()), 4), round(float(half), 4)]


def score(report: Path, toy: Path) -> dict:
    from PIL import Image

    rep = json.loads((report / "eval.json").read_text())
    labels = json.loads((toy / "labels.json").read_text())
    judge = td.load_judge(toy / "judge.pt")
    samplers = list(rep["per_pair"][0]["scores"]) + [f"base-{rep['steps_base']}"] if rep["per_pair"] else []
    out = {"pairs": len(rep["per_pair"]), "samplers": {}}
    for name in dict.fromkeys(samplers):
        px, klass, colour = [], [], []
        for pr in rep["per_pair"]:
            arr = np.asarray(Image.open(report / "images" / f"{pr['prompt']}-{pr['seed']}-{name}.png").convert("RGB"))
            px.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1)
            klass.append(labels[pr["prompt"]][0])
            colour.append(labels[pr["prompt"]][1])
        acc = judge.accuracy(torch.stack(px), torch.tensor(klass), torch.tensor(colour))
        row = {"class_acc": _mean_ci(acc["class"]), "colour_acc": _mean_ci(acc["colour"])}
        psnr = [pr["scores"][name]["psnr"] for pr in rep["per_pair"] if name in pr["scores"]]
        if psnr:
            row["psnr_to_ref_db"] = _mean_ci(psnr)
        out["samplers"][name] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", required=True)
    ap.add_argument("--toy", required=True)
    ap.add_argument("--output")
    a = ap.parse_args(argv)
    result = score(Path(a.report), Path(a.toy))
    out = Path(a.output) if a.output else Path(a.report) / "toy_score.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
