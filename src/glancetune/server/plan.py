"""A run's plan, as `glancetune glance --dry-run` prints it (the same `Plan` object and describers: data, ladder,
LoRA targets, steps, optimizer, checkpoints, memory plan), plus the ladder as data for the page's plot, and the
plot itself: an SVG of sigma / timestep per sampling step, slow vs fast.
"""
from __future__ import annotations

import threading

from ..config.schema import load_config
from ..schedule import timestep

_lock = threading.Lock()  # one plan at a time: planning imports and builds meta models


def make_plan(config_path) -> dict:
    """{"text": the dry-run report, "steps": steps per phase, "ladder": {slow, fast, size}} for a config file."""
    from ..plan.build import Plan
    from ..plan.describe import report

    with _lock:
        cfg = load_config(config_path)
        job = Plan.build(cfg, "glance")
        text = report(job)
    ladder = {"slow": list(job.ladder.slow), "fast": list(job.ladder.fast), "size": [job.width, job.height]}
    return {"text": text, "steps": job.steps, "ladder": ladder}


def ladder_svg(ladder: dict, width: int = 520, height: int = 240) -> str:
    """Sigma (left axis) and timestep (right axis) per sampling step of the ladder, slow and fast in two colours.
    Each point's tooltip gives the step, timestep and sigma."""
    slow, fast = list(ladder["slow"]), list(ladder["fast"])
    pad, n = 40, len(slow) + len(fast)
    w, h = width - 2 * pad, height - 2 * pad

    def xy(k: int, s: float) -> tuple[float, float]:
        return pad + w * (k / max(1, n - 1)), pad + h * (1 - s)

    parts = [f'<svg class="ladder" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Glance ladder">',
             f'<rect x="{pad}" y="{pad}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>']
    for s in (0, 0.5, 1):
        y = xy(0, s)[1] + 4
        parts.append(f'<text x="{pad - 4}" y="{y:.1f}" text-anchor="end" font-size="10">{s:g}</text>'
                     f'<text x="{pad + w + 4}" y="{y:.1f}" font-size="10">{s * 1000:g}</text>')
    for k in range(n):
        parts.append(f'<text x="{xy(k, 0)[0]:.1f}" y="{pad + h + 14}" text-anchor="middle" font-size="10">{k + 1}'
                     "</text>")
    for phase, colour, first, sigmas in (("slow", "#d9480f", 0, slow), ("fast", "#1971c2", len(slow), fast)):
        pts = [xy(first + j, s) for j, s in enumerate(sigmas)]
        parts.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" fill="none" '
                     f'stroke="{colour}" stroke-width="1.5"/>')
        for j, ((x, y), s) in enumerate(zip(pts, sigmas)):
            parts.append(f'<circle class="{phase}" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"><title>step '
                         f'{first + j + 1} ({phase}): timestep {timestep(s):.4f}, sigma {s:.6f}</title></circle>')
    parts.append(f'<text x="{pad}" y="{height - 6}" font-size="11">sampling step 1..{n}: '
                 '<tspan fill="#d9480f">slow LoRA</tspan> | <tspan fill="#1971c2">fast LoRA</tspan>; '
                 'left: sigma, right: timestep</text></svg>')
    return "".join(parts)


def ladder_table(ladder: dict) -> str:
    rows = [(("slow", s)) for s in ladder["slow"]] + [("fast", s) for s in ladder["fast"]]
    body = "".join(f"<tr><td>{k + 1}</td><td>{p}</td><td>{timestep(s):.4f}</td><td>{s:.7f}</td></tr>"
                   for k, (p, s) in enumerate(rows))
    return ('<table class="ladder-table"><tr><th>step</th><th>phase</th><th>timestep</th><th>sigma</th></tr>'
            f"{body}</table>")
