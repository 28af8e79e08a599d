"""The fast-sampler table on a toy: training-free ladders and trained pairs, several training seeds, held-out prompts.

    python bench/toy/glance_table.py run --toy DIR --out RESULTS_DIR [--device cuda] [--seeds 0,1] [--guidance G]
    python bench/toy/glance_table.py table RESULTS_DIR... > table.md

`run`, in one process through glancetune's own commands (cli.main): `search-ladder` at 10 and 6 steps (the first 4
teacher prompts x 2 seeds, 50 fine steps), then for every VARIANT x training seed a `glance` job and its `eval` on the toy's
held-out prompts (none trained on, none a teacher prompt) against base-50 with the same noise, with the searched
ladder of its length as a row. Each finished eval appends one line to RESULTS_DIR/results.jsonl (so a call cut short
keeps what it finished) and its eval.json lands in RESULTS_DIR/<variant>-s<seed>/.

The settings below were fixed before the third toy (scenes.py) was trained; nothing is tuned per toy.
`table`: per toy and step count, one row per sampler: NFE, mean PSNR to base-50 with a normal 95% interval over the
pairs (the trained rows pool their training seeds and also give each seed's mean), and the win-rate (bootstrap 95%)
of the row against the default schedule and against the searched ladder at the same step count.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

DISTILL = {"glance_objective": "distill", "glance_teacher_seeds": 2, "glance_trajectory_substeps": 4,
           "learning_rate": 5e-4, "max_train_steps": 200, "glance_student_cfg": "none"}  # CFG baked (true-CFG toys)
GLANCE_CUT = {"glance_ladder": "glance"}  # the paper's fixed cut (the default is the job's own search)
VARIANTS = {  # name -> (ladder steps, uses the searched ladder, config overrides)
    # the toy's glance.json: flow loss, Glance ladder, the paper's one image
    "paper-10": (10, False, {"glance_objective": "flow", **GLANCE_CUT}),
    "distill-glance-10": (10, False, {**DISTILL, **GLANCE_CUT}),
    "distill-searched-10": (10, True, DISTILL),
    "distill-searched-6": (6, True, DISTILL),
    # true-CFG toys only: the student keeps CFG in the slow phase (1.5x the baked pair's passes) or in both (2x)
    "distill-cfgslow-10": (10, True, {**DISTILL, "glance_student_cfg": "slow"}),
    "distill-cfgboth-10": (10, True, {**DISTILL, "glance_student_cfg": "both"}),
}


def toy_prompts(toy: Path) -> tuple[dict, list[str]]:
    """(held-out eval prompts name -> text, teacher prompts): scenes.py writes both; for the Fashion-MNIST toys
    the teacher prompts are the trajectory run's glance_prompts and the held-out set is bench/toy/toy_cpu.sh's."""
    if (toy / "teacher_prompts.json").is_file():
        return json.loads((toy / "prompts.json").read_text()), json.loads((toy / "teacher_prompts.json").read_text())
    prompts = json.loads((toy / "prompts.json").read_text())
    teacher = json.loads((toy / "config" / "glance-trajectory.json").read_text())["glance_prompts"]
    seen = set(teacher) | {(toy / "data" / "toy.txt").read_text().strip()}
    names = list(prompts)
    pick = [names[c * 10 + k] for k in range(10) for c in ((3 * k + 3) % 8, (3 * k + 7) % 8)]
    return {n: prompts[n] for n in pick if prompts[n] not in seen}, teacher


def cli(*argv) -> None:
    from glancetune.cli import main

    rc = main([str(a) for a in argv])
    if rc != 0:
        raise SystemExit(f"glancetune {argv[0]} failed ({rc})")


def run(toy: Path, out: Path, device: str, seeds: list[int], guidance: float | None, eval_seeds: int,
        only: list[str] | None = None, deadline: float | None = None, max_prompts: int | None = None) -> None:
    """`only`: parts to run (search-10, search-6, variant names; default all); `deadline` (epoch seconds): start no
    job after it (a GPU call's time limit)."""
    out.mkdir(parents=True, exist_ok=True)
    only = only or [f"search-{n}" for n in (10, 6)] + [v for v in VARIANTS if guidance is not None or "cfg" not in v]
    held, teacher = toy_prompts(toy)
    held = dict(list(held.items())[:max_prompts])
    atomic(out / "eval_prompts.json", json.dumps(held, indent=1))  # several processes may share `out`
    atomic(out / "search_prompts.json", json.dumps({f"t{i}": t for i, t in enumerate(teacher[:4])}, indent=1))
    base = json.loads((toy / "config" / "glance.json").read_text())
    size = json.loads(Path(base["data_backend_config"]).read_text())[0]["resolution"]
    g = ["--guidance", guidance] if guidance is not None else []
    for n in (10, 6):
        if f"search-{n}" not in only:
            continue
        t0 = time.perf_counter()
        cli("search-ladder", "--model", base["pretrained_model_name_or_path"], "--steps", n, "--width", size,
            "--height", size, "--prompts", out / "search_prompts.json", "--seeds", 2, "--fine-steps", 50,
            *(["--max-sequence-length", base["tokenizer_max_length"]] if base.get("tokenizer_max_length") else []),
            "--device", device, "--output", out / f"ladder-{n}.json", *g)
        log(out, {"event": "search", "steps": n, "seconds": round(time.perf_counter() - t0, 1),
                  "ladder": json.loads((out / f"ladder-{n}.json").read_text())})
    for name, (steps, searched, keys) in VARIANTS.items():
        for seed in seeds if name in only else ():
            if deadline is not None and time.time() > deadline:
                log(out, {"event": "skipped", "variant": name, "seed": seed, "why": "deadline"})
                continue
            t0 = time.perf_counter()
            run_dir = out / "runs" / f"{name}-s{seed}"
            over = {**keys, "seed": seed, "output_dir": str(run_dir), "overwrite_output_dir": True,
                    "cache_dir": str(out / "cache")}
            if keys.get("glance_objective") == "distill":
                over["glance_prompts"] = teacher
                if guidance is not None:
                    over["glance_teacher_guidance"] = guidance
            if searched:
                over["glance_ladder_file"] = str(out / f"ladder-{steps}.json")
            cfg = out / "configs" / f"{name}-s{seed}.json"
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text(json.dumps({**base, **over}, indent=1))
            cli("glance", "--config", cfg)
            train_s = time.perf_counter() - t0
            report = out / f"{name}-s{seed}"
            cli("eval", "--run", run_dir, "--prompts", out / "eval_prompts.json", "--seeds", eval_seeds,
                "--steps-base", 50, "--ladder-file", out / f"ladder-{steps}.json", "--device", device,
                "--grid-rows", 4, "--output", report, *g)
            data = json.loads((report / "eval.json").read_text())
            log(out, {"event": "eval", "variant": name, "seed": seed, "steps": steps, "train_s": round(train_s, 1),
                      "eval_s": round(time.perf_counter() - t0 - train_s, 1), "samplers": data["samplers"],
                      "verdict": data["verdict"],
                      "psnr": {k: [p["scores"][k]["psnr"] for p in data["per_pair"]] for k in data["samplers"]
                               if k != data["reference"]}})


def atomic(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def log(out: Path, row: dict) -> None:
    """One line appended in one write (several processes append to the same file)."""
    import os

    fd = os.open(out / "results.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)
    print(json.dumps({k: v for k, v in row.items() if k not in ("psnr", "samplers", "ladder")}), flush=True)


def mean_ci(xs) -> tuple[float, float]:
    xs = np.asarray(xs, dtype=float)
    return float(xs.mean()), float(1.96 * xs.std(ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else math.nan


def win(a, b, n: int = 2000) -> str:
    a, b = np.asarray(a, float), np.asarray(b, float)
    w = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    boot = w[np.random.default_rng(0).integers(0, len(w), (n, len(w)))].mean(1)
    return f"{w.mean():.2f} [{np.percentile(boot, 2.5):.2f}, {np.percentile(boot, 97.5):.2f}]"


def table(folders: list[Path]) -> str:
    lines = ["| toy | N | sampler | NFE | PSNR to base-50 (dB) [95%] | per training seed | win vs default-N | "
             "win vs searched-N |", "|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
        evals = [r for r in rows if r["event"] == "eval"]
        for n in (10, 6):
            mine = [r for r in evals if r["steps"] == n]
            if not mine:
                continue
            ref, nfe = {}, {}  # the training-free rows: the same in every eval of this step count that has them
            for r in mine:
                for k, v in r["psnr"].items():
                    if k.startswith("base-"):
                        ref.setdefault(k, v)
                        nfe.setdefault(k, r["samplers"][k]["passes_per_image"])
            default, searched = ref[f"base-{n}"], ref[f"base-{n}-searched"]
            free = [(f"default-{n}", f"base-{n}"), (f"searched-{n}", f"base-{n}-searched")]
            if n == 10:
                free.insert(1, ("Glance ladder-10", "base-10-ladder"))
            free += [(f"{k} (CFG, the pair's cost)", k) for k in ref if k not in
                     (f"base-{n}", f"base-{n}-ladder", f"base-{n}-searched")]
            for label, key in free:
                m, h = mean_ci(ref[key])
                lines.append(f"| {folder.name} | {n} | {label} | {nfe[key]:g} | {m:.2f} ± {h:.2f} | | "
                             f"{win(ref[key], default)} | {win(ref[key], searched)} |")
            for variant in dict.fromkeys(r["variant"] for r in mine):
                runs = [r for r in mine if r["variant"] == variant]
                pooled = [x for r in runs for x in r["psnr"]["glance"]]
                m, h = mean_ci(pooled)
                per = ", ".join(f"s{r['seed']} {np.mean(r['psnr']['glance']):.2f}" for r in runs)
                d, s = default * len(runs), searched * len(runs)
                lines.append(f"| {folder.name} | {n} | {variant} | {runs[0]['samplers']['glance']['passes_per_image']:g}"
                             f" | {m:.2f} ± {h:.2f} | {per} | {win(pooled, d)} | {win(pooled, s)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--toy", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--device", default="cuda")
    r.add_argument("--seeds", default="0,1")
    r.add_argument("--eval-seeds", type=int, default=1)
    r.add_argument("--guidance", type=float)
    r.add_argument("--only", nargs="*", help="search-10, search-6 and/or variant names (default: all)")
    r.add_argument("--deadline", type=float, help="epoch seconds after which no job starts")
    r.add_argument("--max-prompts", type=int, help="the first N held-out prompts only (a CPU's time)")
    t = sub.add_parser("table")
    t.add_argument("folders", nargs="+", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "run":
        run(a.toy, a.out, a.device, [int(s) for s in a.seeds.split(",")], a.guidance, a.eval_seeds, a.only,
            a.deadline, a.max_prompts)
    else:
        sys.stdout.write(table(a.folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
