"""The HTML pages, rendered on the server (no templates package, no build step). Live parts (progress, loss
curve, log, validation grids) are filled by static/app.js from the JSON API and its server-sent events; the
Generate page (progress, gallery, ladder choice) by static/generate.js, the validation viewer (labels, lightbox,
two steps side by side) by static/viewer.js. Every value from a run or a user is escaped here.
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict

from .forms import render_fields
from .plan import ladder_svg, ladder_table
from .presets import presets

esc = html.escape


def layout(title: str, page: str, body: str, run_id: str = "") -> str:
    nav = "".join(f'<a href="{href}"{" class=here" if page == key else ""}>{label}</a>'
                  for key, href, label in (("runs", "/", "Runs"), ("new", "/new", "New run"),
                                           ("generate", "/generate", "Generate")))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · glancetune</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
            '<link rel="stylesheet" href="/static/style.css"><link rel="stylesheet" href="/static/gen.css"></head>'
            f'<body data-page="{page}" data-run="{esc(run_id)}"><header><b>glancetune</b><nav>{nav}</nav></header>'
            f'<main>{body}</main><script src="/static/chart.js"></script><script src="/static/app.js"></script>'
            '<script src="/static/data.js"></script><script src="/static/runs.js"></script>'
            '<script src="/static/generate.js"></script><script src="/static/viewer.js"></script>'
            '</body></html>')


def runs_page() -> str:
    body = ('<h1>Runs</h1><div class="scroll"><table id="runs" class="runs"><thead><tr><th><span class="sr">latest validation image</span>'
            '</th><th>run</th><th>status</th><th>progress</th><th>ETA</th><th class="created">created</th></tr></thead><tbody></tbody>'
            '</table></div>'
            '<p id="no-runs" class="meta" hidden>No runs yet: <a href="/new">start one</a>.</p>')
    return layout("Runs", "runs", body)


def presets_html() -> str:
    """One button per preset; their values travel as JSON in a script element (`<` escaped) for app.js."""
    items = presets()
    buttons = "".join(f'<button type="button" class="secondary preset" data-preset="{k}" id="preset-{esc(p.name)}" '
                      f'title="{esc(p.source)}">{esc(p.label)}</button> ' for k, p in enumerate(items))
    data = json.dumps([asdict(p) for p in items]).replace("<", "\\u003c")
    return (f'<p class="actions">{buttons}</p><p class="meta" id="preset-note"></p>'
            f'<script type="application/json" id="presets-data">{data}</script>')


def new_page() -> str:
    body = f"""<h1>New run</h1>
<form id="new-run" autocomplete="off">
<p id="form-error" class="error" role="alert" hidden></p>
<fieldset class="presets"><legend>Presets (fill the form; every value stays editable)</legend>{presets_html()}
<div class="field"><label for="f-config">or load a config file</label><input type="file" id="f-config"
 accept=".json,.toml,.yaml,.yml"><div class="help">a <code>glancetune glance --config</code> file (JSON, TOML or YAML),
 read by the server as the command reads it</div></div></fieldset>
<fieldset><legend>Data</legend>
<div class="field"><label for="f-name">name</label><input type="text" id="f-name" name="name" placeholder="my-run"></div>
<div id="drop" class="drop"><div class="field"><label for="f-images">image(s)</label><input type="file" id="f-images"
 name="images" multiple accept="image/png,image/jpeg,image/webp"><div class="help">PNG, JPEG or WEBP; one image and its
 caption is Glance's recipe. Or drop images (with same-name .txt captions) or a .zip of them here.</div></div>
<div class="field"><label for="f-zip">or a ZIP</label><input type="file" id="f-zip" accept=".zip,application/zip">
<div class="help">images + same-name .txt captions, at most 64 files; unpacked into the list above</div></div>
<p id="drop-note" class="meta" role="status"></p></div>
<div id="captions"><div class="field"><label for="f-caption">caption</label><textarea id="f-caption" name="captions"
 rows="2"></textarea></div></div><div id="thumbs" class="thumbs"></div>
<div id="buckets" class="scroll" hidden><table class="buckets"><caption class="meta" id="bucket-note"></caption><thead>
<tr><th>image</th><th>size</th><th>trains at</th><th>bucket</th></tr></thead><tbody></tbody></table></div>
<div class="field"><label for="f-folder">or a folder on the server</label><input type="text" id="f-folder"
 name="folder" placeholder="/data/my-dataset"><div class="help">image + same-name .txt caption pairs; read, never
 written</div></div>
<div class="field"><label for="f-resolution">resolution</label><input type="text" id="f-resolution"
 name="resolution" value="1024"><div class="help">training area in pixels² (the dataloader's resolution)</div></div>
</fieldset>
<fieldset><legend>Settings (the <code>glancetune glance</code> config; empty = default)</legend>{render_fields()}
</fieldset>
<h2>Command</h2><p class="meta">The same run from a terminal: the config this form makes, the dataloader JSON
and the command (the server writes both files into the run's folder and runs this command there).</p>
<pre id="command" class="command"></pre>
<p><button type="submit" id="plan-btn">Check the plan</button></p>
</form>
<section id="plan" hidden><h2>Plan (<code>--dry-run</code>)</h2><div id="ladder"></div><pre id="plan-text"></pre>
<p><button id="start-btn">Start this run</button> <button id="discard-btn" class="secondary">Discard</button></p>
</section>"""
    return layout("New run", "new", body)


def run_extras(run_id: str, note: str) -> str:
    """The run page's checkpoints and note (filled and saved by static/runs.js)."""
    return f"""<h2>Checkpoints</h2><div class="scroll"><table id="checkpoints" class="checkpoints"><thead><tr>
<th>step</th><th>size</th><th>download</th></tr></thead><tbody></tbody></table></div>
<p class="meta" id="no-checkpoints">none yet</p>
<h2>Note</h2><div class="field"><label for="note">note <span class="meta">(kept in the run folder's note.txt; at most
2000 characters)</span></label><textarea id="note" rows="2" maxlength="2000">{esc(note)}</textarea></div>
<p><button type="button" id="note-btn" class="secondary">Save note</button> <span id="note-saved" class="meta"
 role="status"></span></p>"""


def run_page(run_id: str, rec: dict, note: str = "") -> str:
    plan = rec.get("plan") or {}
    ladder = (ladder_svg(plan["ladder"]) + ladder_table(plan["ladder"])) if plan.get("ladder") else ""
    rid = esc(run_id)
    body = f"""<h1>{esc(rec.get("name", run_id))} <small class="meta">{rid}</small></h1>
<div class="statusline"><span>status <b id="status" class="status">…</b></span> <span id="phase" class="phase"
 hidden></span> <span>step <span id="step">0</span> / <span id="total">?</span></span>
<progress id="progress" max="1" value="0"></progress> <span>loss <span id="loss-now">–</span></span>
<span id="rate-box" hidden><span id="rate">–</span> s/step</span> <span id="eta-box" hidden>ETA <span id="eta">
</span></span> <span id="queue-pos" class="meta" hidden></span></div>
<p class="actions"><button id="stop-btn" hidden>Stop (checkpoint)</button>
<button id="unqueue-btn" hidden>Leave the queue</button><button id="cancel-eval-btn" hidden>Cancel eval</button>
<button id="start-btn" hidden>Start</button><button id="resume-btn" hidden>Resume</button>
<button id="delete-btn" class="danger" hidden>Delete…</button> <span id="busy-note" class="meta"></span></p>
<p id="downloads" class="actions" hidden><a id="dl-diffusers" href="/api/runs/{rid}/download/diffusers">
Download LoRA pair (diffusers)</a> <a id="dl-comfyui" href="/api/runs/{rid}/download/comfyui">Download
ComfyUI files</a> <a id="dl-eval" href="/api/runs/{rid}/download/eval" hidden>Download eval report</a>
<a href="/generate?run={rid}">Generate with it</a></p>
<p class="actions"><a id="dl-config" href="/api/runs/{rid}/config">Download config (glance.json)</a>
<button type="button" id="duplicate-btn" class="secondary">Duplicate (a new draft, same config and data)</button></p>
<p id="action-error" class="error" role="alert" hidden></p>
<h2>Loss</h2><svg id="loss" class="loss" viewBox="0 0 640 240" width="640" height="240" role="img"
 aria-label="loss per step"></svg>
<h2>Validation</h2><div id="validation" class="grids"><p class="meta" id="no-validation">none yet</p></div>
<section id="compare" hidden><h3>Compare two steps</h3><p class="actions"><label>left <select id="cmp-a"></select>
</label> <label>right <select id="cmp-b"></select></label></p><div class="compare"><figure id="cmp-fig-a"><img
 alt="validation grid (left)"><figcaption></figcaption></figure><figure id="cmp-fig-b"><img
 alt="validation grid (right)"><figcaption></figcaption></figure></div></section>
<h2>Log</h2><pre id="log" class="log"></pre>
<section id="eval-section" hidden><h2>Eval</h2><p id="eval-progress" class="meta" hidden></p>
<div id="eval-report" hidden><p id="eval-meta" class="meta"></p><div class="scroll"><table id="eval-table"
 class="eval"><thead><tr><th>sampler</th><th>passes / image</th><th>s / image</th><th>PSNR (dB)</th><th>SSIM</th>
<th>MS-SSIM</th><th>latent MSE</th><th>alarms</th></tr></thead><tbody></tbody></table></div>
<p id="eval-verdict"></p><figure id="eval-figure" hidden><img id="eval-grid" alt="eval grid: the reference and
each sampler per prompt and seed"><figcaption class="meta">eval/grid.png</figcaption></figure></div></section>
<form id="eval" hidden><h2>Evaluate</h2><p class="meta"><code>glancetune eval</code>: Glance against the base
model's own 50-step image and its 10-step images (PSNR, SSIM, win-rate); a queued device job.</p>
<div class="field"><label for="e-prompts">prompts</label><textarea id="e-prompts" name="prompts" rows="2"
 placeholder="one per line (empty: glancetune's 32 eval prompts)"></textarea></div>
<div class="field"><label for="e-seeds">seeds per prompt</label><input type="text" id="e-seeds" name="seeds"
 value="1"></div><p><button type="submit" id="eval-btn">Evaluate</button></p></form>
<details><summary>Plan (<code>--dry-run</code>) and ladder</summary>{ladder}<pre>{esc(plan.get("text", ""))}</pre>
</details>{run_extras(run_id, note)}"""
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
<div class="field"><label for="g-ladder">ladder</label><select id="g-ladder" name="ladder"><option value="">the
 run's own ladder</option></select><div class="help">or a searched ladder file (<code>glancetune search-ladder</code>
 output) in the run's <code>ladders/</code> folder: <label class="upload-ladder">upload one <input type="file"
 id="g-ladder-file" accept=".json,application/json"></label></div></div>
<p><button type="submit" id="generate-btn">Generate</button> <span id="gen-busy" class="meta" role="status"
 aria-live="polite"></span></p>
<p id="gen-error" class="error" role="alert" hidden></p></form>
<h2>Images <small class="meta">(this run's, newest first; kept in its <code>generated/</code> folder)</small></h2>
<section id="images" class="images"><p class="meta" id="no-images">none yet</p></section>"""
    return layout("Generate", "generate", body)
