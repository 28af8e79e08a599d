"""The HTML pages, rendered on the server (no templates package, no build step). Live parts (progress, loss
curve, log, validation grids, generated images) are filled by static/app.js from the JSON API and its
server-sent events. Every value from a run or a user is escaped here.
"""
from __future__ import annotations

import html

from .forms import render_fields
from .plan import ladder_svg, ladder_table

esc = html.escape


def layout(title: str, page: str, body: str, run_id: str = "") -> str:
    nav = "".join(f'<a href="{href}"{" class=here" if page == key else ""}>{label}</a>'
                  for key, href, label in (("runs", "/", "Runs"), ("new", "/new", "New run"),
                                           ("generate", "/generate", "Generate")))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · glancetune</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="stylesheet" href="/static/style.css"></head>'
            f'<body data-page="{page}" data-run="{esc(run_id)}"><header><b>glancetune</b><nav>{nav}</nav></header>'
            f'<main>{body}</main><script src="/static/app.js"></script></body></html>')


def runs_page() -> str:
    body = ('<h1>Runs</h1><table id="runs" class="runs"><thead><tr><th>run</th><th>status</th><th>progress</th>'
            '<th>ETA</th><th>created</th></tr></thead><tbody></tbody></table>'
            '<p id="no-runs" class="meta" hidden>No runs yet: <a href="/new">start one</a>.</p>')
    return layout("Runs", "runs", body)


def new_page() -> str:
    body = f"""<h1>New run</h1>
<form id="new-run" autocomplete="off">
<fieldset><legend>Data</legend>
<div class="field"><label for="f-name">name</label><input type="text" id="f-name" name="name" placeholder="my-run"></div>
<div class="field"><label for="f-images">image(s)</label><input type="file" id="f-images" name="images" multiple
 accept="image/png,image/jpeg,image/webp"><div class="help">PNG, JPEG or WEBP; one image and its caption is Glance's
 recipe</div></div>
<div id="captions"><div class="field"><label for="f-caption">caption</label><textarea id="f-caption" name="captions"
 rows="2"></textarea></div></div>
<div class="field"><label for="f-folder">or a folder on the server</label><input type="text" id="f-folder"
 name="folder" placeholder="/data/my-dataset"><div class="help">image + same-name .txt caption pairs; read, never
 written</div></div>
<div class="field"><label for="f-resolution">resolution</label><input type="text" id="f-resolution"
 name="resolution" value="1024"><div class="help">training area in pixels² (the dataloader's resolution)</div></div>
</fieldset>
<fieldset><legend>Settings (the <code>glancetune glance</code> config; empty = default)</legend>{render_fields()}
</fieldset>
<p><button type="submit" id="plan-btn">Check the plan</button></p>
<p id="form-error" class="error" role="alert" hidden></p>
</form>
<section id="plan" hidden><h2>Plan (<code>--dry-run</code>)</h2><div id="ladder"></div><pre id="plan-text"></pre>
<p><button id="start-btn">Start this run</button> <button id="discard-btn" class="secondary">Discard</button></p>
</section>"""
    return layout("New run", "new", body)


def run_page(run_id: str, rec: dict) -> str:
    plan = rec.get("plan") or {}
    ladder = (ladder_svg(plan["ladder"]) + ladder_table(plan["ladder"])) if plan.get("ladder") else ""
    body = f"""<h1>{esc(rec.get("name", run_id))} <small class="meta">{esc(run_id)}</small></h1>
<p>status <b id="status" class="status">…</b> · step <span id="step">0</span> / <span id="total">?</span>
 · ETA <span id="eta">–</span></p><progress id="progress" max="1" value="0"></progress>
<p class="actions"><button id="stop-btn" hidden>Stop (checkpoint)</button>
<button id="start-btn" hidden>Start</button><button id="resume-btn" hidden>Resume</button>
<button id="delete-btn" class="danger">Delete…</button></p>
<p id="downloads" class="actions" hidden><a id="dl-diffusers" href="/api/runs/{esc(run_id)}/download/diffusers">
Download LoRA pair (diffusers)</a> <a id="dl-comfyui" href="/api/runs/{esc(run_id)}/download/comfyui">Download
ComfyUI files</a> <a id="dl-eval" href="/api/runs/{esc(run_id)}/download/eval" hidden>Download eval report</a>
<a href="/generate?run={esc(run_id)}">Generate with it</a></p>
<form id="eval" hidden><h2>Evaluate</h2><p class="meta"><code>glancetune eval</code>: Glance against the base
model's own 50-step image and its 10-step images (PSNR, SSIM, win-rate); a queued device job.</p>
<div class="field"><label for="e-prompts">prompts</label><textarea id="e-prompts" name="prompts" rows="2"
 placeholder="one per line (empty: glancetune's 32 eval prompts)"></textarea></div>
<div class="field"><label for="e-seeds">seeds per prompt</label><input type="text" id="e-seeds" name="seeds"
 value="1"></div><p><button type="submit" id="eval-btn">Evaluate</button></p></form>
<p id="action-error" class="error" role="alert" hidden></p>
<h2>Loss</h2><svg id="loss" class="loss" viewBox="0 0 520 200" width="520" height="200"></svg>
<h2>Validation</h2><div id="validation" class="grids"><p class="meta">none yet (set validation_prompt)</p></div>
<h2>Log</h2><pre id="log" class="log"></pre>
<details><summary>Plan (<code>--dry-run</code>) and ladder</summary>{ladder}<pre>{esc(plan.get("text", ""))}</pre>
</details>"""
    return layout(rec.get("name", run_id), "run", body, run_id)


def generate_page(runs: list[tuple[str, str]], chosen: str | None) -> str:
    options = "".join(f'<option value="{esc(i)}"{" selected" if i == chosen else ""}>{esc(n)} ({esc(i)})</option>'
                      for i, n in runs)
    body = f"""<h1>Generate</h1>
<form id="generate">
<div class="field"><label for="g-run">run</label><select id="g-run" name="run">{options}</select>
<div class="help">finished runs; the pipeline stays loaded between requests</div></div>
<div class="field"><label for="g-prompts">prompt(s)</label><textarea id="g-prompts" name="prompts" rows="3"
 placeholder="one prompt per line"></textarea></div>
<div class="field"><label for="g-seed">seed</label><input type="text" id="g-seed" name="seed" value="0"></div>
<div class="field"><label for="g-width">width</label><input type="text" id="g-width" name="width"
 placeholder="trained size"></div>
<div class="field"><label for="g-height">height</label><input type="text" id="g-height" name="height"
 placeholder="trained size"></div>
<div class="field"><label for="g-guidance">guidance</label><input type="text" id="g-guidance" name="guidance"
 placeholder="the run's"></div>
<p><button type="submit" id="generate-btn">Generate</button></p>
<p id="gen-error" class="error" role="alert" hidden></p></form>
<section id="images" class="images"></section>"""
    return layout("Generate", "generate", body)
