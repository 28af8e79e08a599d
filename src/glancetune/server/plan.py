"""A run's plan, as `glancetune glance --dry-run` prints it (the same `Plan` object and describers: data, ladder,
LoRA targets, steps, optimizer, checkpoints, memory plan), plus the ladder as data for the page's plot, and the
plot itself: an SVG of sigma per sampling step, slow vs fast, over the model's own N-step schedule.
"""
from __future__ import annotations

import html
import json
import threading

from ..config import load_config
from ..schedule import timestep

_lock = threading.Lock()  # one plan at a time: planning imports and builds meta models


def make_plan(config_path) -> dict:
    """{"text": the dry-run report, "steps": steps per phase, "ladder": {...}} for a run's config file."""
    from ..ladder import model_schedule
    from ..train import optim
    from ..train.lora import count_trainable
    from ..train.plan import Plan

    with _lock:
        cfg = load_config(config_path)
        job = Plan(cfg, "glance")
        n = count_trainable(job.info.transformer_config, cfg, job.targets)
        text = "\n".join([job.describe(), f"trainable LoRA parameters per phase: {n:,}", f"steps: {job.steps_note}",
                          optim.describe(cfg, job.steps), job.checkpoint_plan(), job.memory_plan(),
                          "resolved config: " + json.dumps(cfg.model_dump(), default=str)])
        schedule = list(model_schedule(job.info, job.width, job.height, cfg.glance_ladder_steps))
    ladder = {"slow": list(job.ladder.slow), "fast": list(job.ladder.fast), "schedule": schedule,
              "size": [job.width, job.height]}
    return {"text": text, "steps": job.steps, "ladder": ladder}


def ladder_svg(ladder: dict, width: int = 520, height: int = 240) -> str:
    """Sigma (left axis) per sampling step of the ladder, slow and fast in two colours, over the model's own
    N-step schedule (grey, on the same step axis scaled to N). Each point's tooltip gives timestep and sigma."""
    slow, fast, sched = ladder["slow"], ladder["fast"], ladder.get("schedule") or []
    pad, n = 36, len(slow) + len(fast)
    w, h = width - 2 * pad, height - 2 * pad

    def xy(i: float, last: float, s: float) -> tuple[float, float]:
        return pad + w * (i / max(1, last)), pad + h * (1 - s)

    parts = [f'<svg class="ladder" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Glance ladder">',
             f'<rect x="{pad}" y="{pad}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>']
    for s in (0, 0.5, 1):
        parts.append(f'<text x="{pad - 4}" y="{xy(0, 1, s)[1] + 4:.1f}" text-anchor="end" font-size="10">'
                     f'{s:g}</text>')
    if sched:
        pts = " ".join("%.1f,%.1f" % xy(i, len(sched) - 1, s) for i, s in enumerate(sched))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#bbb" stroke-width="1">'
                     f'<title>the model\'s own {len(sched)}-step schedule</title></polyline>')
    for k, s in enumerate(list(slow) + list(fast)):
        x, y = xy(k, n - 1, s)
        colour, phase = ("#d9480f", "slow") if k < len(slow) else ("#1971c2", "fast")
        parts.append(f'<circle class="{phase}" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"><title>'
                     f'step {k + 1} ({phase}): timestep {timestep(s):.4f}, sigma {s:.6f}</title></circle>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="11">sampling step 1..{n} '
                 f'(<tspan fill="#d9480f">slow</tspan> | <tspan fill="#1971c2">fast</tspan>); grey: own '
                 f'{len(sched)}-step schedule; y: sigma</text></svg>')
    return "".join(parts)


def ladder_table(ladder: dict) -> str:
    rows = [(("slow", s)) for s in ladder["slow"]] + [("fast", s) for s in ladder["fast"]]
    body = "".join(f"<tr><td>{k + 1}</td><td>{p}</td><td>{timestep(s):.4f}</td><td>{s:.7f}</td></tr>"
                   for k, (p, s) in enumerate(rows))
    return ('<table class="ladder-table"><tr><th>step</th><th>phase</th><th>timestep</th><th>sigma</th></tr>'
            f"{body}</table>")


def escape(text: str) -> str:
    return html.escape(text)
