"""The issue-13 table from `bench/toy/toy_cpu.sh` reports: one markdown row per report-* folder of each toy folder.

    python bench/toy/toy_table.py /tmp/toy-quadrant /tmp/toy-centre

Per sampler (base-10, base-10 on the Glance ladder without LoRAs, Glance): mean PSNR to base-50 over the pairs,
the judge's class / colour accuracy (bench/toy/toy_score.py), and for Glance: its win-rate against base-10 and against
the ladder alone (eval's bootstrap 95% CI), the mean per-pair PSNR gain over base-10 with a normal 95% CI and its median, and the
share of base-10's error to base-50 it removes, 1 - mean MSE(Glance) / mean MSE(base-10) (1 = it reaches base-50),
and the same for the ladder alone.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def mse(psnr_db: float) -> float:
    return 4.0 * 10 ** (-psnr_db / 10)  # images in [-1, 1]: data range 2


def row(report: Path) -> dict:
    rep = json.loads((report / "eval.json").read_text())
    score = json.loads((report / "toy_score.json").read_text())["samplers"]
    pairs = rep["per_pair"]
    ps = {k: [p["scores"][k]["psnr"] for p in pairs] for k in ("base-10", "base-10-ladder", "glance")}
    gain = [g - b for g, b in zip(ps["glance"], ps["base-10"])]
    m = sum(gain) / len(gain)
    sd = math.sqrt(sum((x - m) ** 2 for x in gain) / (len(gain) - 1))
    med = sorted(gain)[len(gain) // 2] if len(gain) % 2 else sum(sorted(gain)[len(gain) // 2 - 1:][:2]) / 2
    closed = 1 - sum(map(mse, ps["glance"])) / sum(map(mse, ps["base-10"]))
    closed_ladder = 1 - sum(map(mse, ps["base-10-ladder"])) / sum(map(mse, ps["base-10"]))
    wr = rep["win_rate"]
    return {"run": report.name.removeprefix("report-"), "pairs": len(pairs),
            "psnr": {k: round(sum(v) / len(v), 2) for k, v in ps.items()},
            "judge": {k: [round(score[k]["class_acc"][0], 2), round(score[k]["colour_acc"][0], 2)] for k in score},
            "win_base10": [wr["glance_vs_base-10"]["psnr"]["rate"]] + wr["glance_vs_base-10"]["psnr"]["ci95"],
            "win_ladder": [wr["glance_vs_base-10-ladder"]["psnr"]["rate"]] + wr["glance_vs_base-10-ladder"]["psnr"]["ci95"],
            "gain_db": [round(m, 2), round(1.96 * sd / math.sqrt(len(gain)), 2)], "median_gain_db": round(med, 2), "gap_closed": round(closed, 3),
            "gap_closed_ladder": round(closed_ladder, 3)}


def main(argv: list[str]) -> int:
    print("| toy | run | pairs | PSNR base-10 / ladder / Glance (dB) | Glance gain over base-10 (dB, 95% CI; median) | "
          "base-10 error removed: Glance (ladder) | Glance wins vs base-10 | vs ladder | Glance class / colour acc (base-50) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for toy in map(Path, argv):
        for rep in sorted(toy.glob("report-*")):
            if not (rep / "toy_score.json").exists():
                continue
            r = row(rep)
            p, j, a, b = r["psnr"], r["judge"], r["win_base10"], r["win_ladder"]
            print(f"| {toy.name} | {r['run']} | {r['pairs']} | {p['base-10']} / {p['base-10-ladder']} / {p['glance']} | "
                  f"{r['gain_db'][0]:+.2f} +- {r['gain_db'][1]}; {r['median_gain_db']:+.2f} | {r['gap_closed']:.0%} ({r['gap_closed_ladder']:.0%}) | {a[0]:.2f} [{a[1]:.2f}, "
                  f"{a[2]:.2f}] | {b[0]:.2f} [{b[1]:.2f}, {b[2]:.2f}] | {j['glance'][0]} / {j['glance'][1]} "
                  f"({j['base-50'][0]} / {j['base-50'][1]}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
