// glancetune server pages: plain JS, no build step. Data comes from the JSON API and server-sent events.
"use strict";

const $ = (sel) => document.querySelector(sel);
const page = document.body.dataset.page;
const runId = document.body.dataset.run;

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(url, opts);
  const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function showError(el, err) {
  el.textContent = err ? String(err.message || err) : "";
  el.hidden = !err;
}

function fmtEta(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? `${h}h ` : "") + (h || m ? `${m}m ` : "") + `${r}s`;
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// --- runs list --------------------------------------------------------------------------------------------
function runsPage() {
  const body = $("#runs tbody");
  new EventSource("/api/events").onmessage = (ev) => {
    const runs = JSON.parse(ev.data);
    body.replaceChildren();
    $("#no-runs").hidden = runs.length > 0;
    for (const r of runs.slice().reverse()) {
      const tr = el("tr", { "data-run": r.id });
      const href = `/runs/${encodeURIComponent(r.id)}`;
      const cells = [el("td", { class: "thumb" }), el("td"), el("td", { class: `status ${r.status}` }, r.status),
                     el("td"), el("td", {}, fmtEta(r.eta)), el("td", { class: "created" }, new Date(r.created * 1000).toLocaleString())];
      if (r.thumb) {
        const a = el("a", { href });
        a.append(el("img", { src: `/runs/${encodeURIComponent(r.id)}/file/${r.thumb}`, alt: `latest validation of ${r.name}` }));
        cells[0].append(a);
      }
      cells[1].append(el("a", { href }, r.name));
      if (r.note) cells[1].append(el("div", { class: "note meta" }, r.note));
      if (r.phase && r.phase !== r.status) cells[2].append(el("span", { class: "phase" }, r.phase));
      if (r.queue) cells[2].append(el("span", { class: "queue-pos meta" }, ` #${r.queue} in the queue`));
      cells[3].append(el("progress", { max: r.total || 1, value: r.step || 0 }), ` ${r.step}/${r.total ?? "?"}`);
      tr.append(...cells);
      body.append(tr);
    }
  };
}

// --- new run ----------------------------------------------------------------------------------------------
function settings() {
  const out = {};
  for (const f of document.querySelectorAll("[data-key]")) {
    const v = f.type === "checkbox" ? (f.checked ? "true" : "false") : f.value;
    if (v !== f.dataset.default) out[f.dataset.key] = v;
  }
  return out;
}

// A form value as the config file holds it: text fields as typed; others as YAML scalars / JSON lists, as the
// server reads them (numbers, true / false, null, [..] / {..}), else text.
function typed(field, v) {
  if (field.hasAttribute("data-text")) return v;
  if (/^(true|false)$/i.test(v)) return v.toLowerCase() === "true";
  if (/^(null|~)$/.test(v)) return null;
  if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v)) return Number(v);
  if (/^[[{]/.test(v)) { try { return JSON.parse(v); } catch (e) { return v; } }
  return v;
}

function showCommand() {
  const config = {};
  const given = settings();
  for (const f of document.querySelectorAll("[data-key]")) {
    const v = given[f.dataset.key];
    if (v !== undefined && v.trim() !== "") config[f.dataset.key] = typed(f, v);
  }
  config.data_backend_config = "config/multidatabackend.json";
  config.output_dir = "output";
  const res = Number($("#f-resolution").value.trim()) || 1024;
  const backend = [{ backend: "simple", resolution: res, shuffle: true, image_dir: "data", caption_extension: ".txt" }];
  $("#command").textContent = `# config/glance.json\n${JSON.stringify(config, null, 2)}\n` +
    `# config/multidatabackend.json (data/: the images, each with a same-name .txt caption)\n` +
    `${JSON.stringify(backend)}\nglancetune glance --config config/glance.json`;
}

function filterFlavours() {
  const family = $("#f-model_family").value, menu = $("#f-model_flavour");
  for (const o of menu.options) o.hidden = !!o.dataset.family && o.dataset.family !== family;
  if (menu.selectedOptions[0]?.hidden) menu.value = "";
}

function applyPreset(p) {
  for (const f of document.querySelectorAll("[data-key]")) {
    const v = p.settings[f.dataset.key] ?? f.dataset.default;
    if (f.type === "checkbox") f.checked = v === "true"; else f.value = v;
  }
  if (p.resolution) $("#f-resolution").value = String(p.resolution);
  filterFlavours();
  $("#preset-note").textContent = `${p.label}: from ${p.source}`;
  clearFieldErrors();
  showCommand();
}

function clearFieldErrors() {
  for (const f of document.querySelectorAll(".field.invalid")) f.classList.remove("invalid");
  for (const m of document.querySelectorAll(".field-error")) m.remove();
}

// The field an error line names ("settings: key 'lora_rank': ...", "resolution: ...", "captions: ...") or whose
// value it starts with ("tiny:nope: unknown tiny model"), if any.
function fieldOf(message) {
  const m = /^(?:settings: (?:unknown )?key '([^']+)'|([A-Za-z_][A-Za-z0-9_]*)[: ])/.exec(message);
  const key = m && (m[1] || m[2]);
  const alias = { captions: "#new-run [name=captions]", images: "#f-images", image: "#f-images", data: "#f-images" };
  const byName = key && (document.getElementById(`f-${key}`) || (alias[key] && $(alias[key])));
  if (byName) return byName;
  for (const f of document.querySelectorAll("#new-run input[type=text], #new-run textarea")) {
    if (f.value.trim() && message.startsWith(`${f.value.trim()}:`)) return f;
  }
  return null;
}

function showFormError(err) {
  clearFieldErrors();
  showError($("#form-error"), err);
  const field = fieldOf(String(err.message || err));
  const box = field?.closest(".field");
  if (box) {
    box.classList.add("invalid");
    box.append(el("div", { class: "field-error", role: "alert" }, String(err.message || err)));
    const details = box.closest("details");
    if (details) details.open = true;
    field.focus({ preventScroll: true });
    box.scrollIntoView({ block: "center" });
  } else {
    $("#form-error").scrollIntoView({ block: "center" });
  }
}

function showThumbs() {
  const files = Array.from($("#f-images").files), box = $("#captions"), thumbs = $("#thumbs");
  thumbs.replaceChildren();
  if (files.length >= 2) {
    box.replaceChildren();
    files.forEach((f, k) => {
      const d = el("div", { class: "field upload" });
      d.append(el("label", { for: `f-caption-${k}` }, `caption of ${f.name}`));
      const right = el("div", { class: "upload-row" });
      right.append(el("img", { src: URL.createObjectURL(f), alt: f.name, class: "upload-thumb" }),
                   el("textarea", { id: `f-caption-${k}`, name: "captions", rows: 2 }));
      d.append(right);
      box.append(d);
    });
  } else if (files.length === 1) {
    const fig = el("figure", { class: "upload" });
    fig.append(el("img", { src: URL.createObjectURL(files[0]), alt: files[0].name, class: "upload-thumb" }),
               el("figcaption", { class: "meta" }, files[0].name));
    thumbs.append(fig);
  }
}

function newPage() {
  let draft = null;
  const form = $("#new-run"), err = $("#form-error");
  const presets = JSON.parse($("#presets-data").textContent);
  for (const b of document.querySelectorAll("button.preset")) b.onclick = () => applyPreset(presets[+b.dataset.preset]);
  $("#f-images").addEventListener("change", showThumbs);
  $("#f-model_family").addEventListener("change", filterFlavours);
  form.addEventListener("input", (ev) => {
    if (ev.target.closest(".field.invalid")) { clearFieldErrors(); showError(err, null); }
    showCommand();
  });
  form.addEventListener("change", showCommand);
  filterFlavours();
  showCommand();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(err, null);
    clearFieldErrors();
    const fd = new FormData();
    for (const k of ["name", "folder", "resolution"]) fd.append(k, form.elements[k].value);
    for (const f of $("#f-images").files) fd.append("images", f);
    if ($("#f-images").files.length) for (const c of form.querySelectorAll("[name=captions]")) fd.append("captions", c.value);
    fd.append("settings", JSON.stringify(settings()));
    $("#plan-btn").disabled = true;
    try {
      if (draft) { await api("DELETE", `/api/runs/${draft}?confirm=${draft}`).catch(() => {}); draft = null; }
      const r = await api("POST", "/api/runs", fd);
      draft = r.id;
      $("#ladder").innerHTML = r.ladder_svg;  // made by the server from numbers only
      $("#plan-text").textContent = r.plan.text;
      $("#plan").hidden = false;
      $("#plan").scrollIntoView();
    } catch (e) { showFormError(e); } finally { $("#plan-btn").disabled = false; }
  });
  $("#start-btn").addEventListener("click", async () => {
    try { await api("POST", `/api/runs/${draft}/start`); location.href = `/runs/${draft}`; } catch (e) { showFormError(e); }
  });
  $("#discard-btn").addEventListener("click", async () => {
    await api("DELETE", `/api/runs/${draft}?confirm=${draft}`).catch(() => {});
    draft = null; $("#plan").hidden = true;
  });
}

// --- one run ----------------------------------------------------------------------------------------------
function followLog(box, text) {
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 24;  // the user did not scroll up
  if (box.textContent !== text) box.textContent = text;
  if (atEnd || !box.dataset.seen) box.scrollTop = box.scrollHeight;
  box.dataset.seen = "1";
}

function showButtons(r) {
  const s = r.status, busy = ["queued", "running", "stopping", "evaluating"].includes(s);
  $("#stop-btn").hidden = s !== "running";
  $("#unqueue-btn").hidden = s !== "queued";
  $("#cancel-eval-btn").hidden = s !== "evaluating";
  $("#start-btn").hidden = s !== "draft";
  $("#resume-btn").hidden = !["interrupted", "failed"].includes(s);
  $("#delete-btn").hidden = busy;
  $("#busy-note").textContent = busy ? `delete is possible once the run is no longer ${s}` : "";
  $("#eval").hidden = s !== "done";
}

function showEval(r) {
  const rep = r.eval, prog = r.eval_progress;
  $("#eval-section").hidden = !rep && !prog;
  $("#eval-progress").hidden = !prog;
  if (prog) $("#eval-progress").textContent = `evaluating: ${prog.done} of ${prog.total} prompt x seed pairs done` +
    (rep ? " (below: the previous report)" : "");
  $("#eval-report").hidden = !rep;
  if (!rep) return;
  const fmt = (v, d) => (v === null || v === undefined ? "" : typeof v === "number" ? v.toFixed(d) : String(v));
  const rows = rep.rows.map((row) => {
    const tr = el("tr", { "data-sampler": row.sampler });
    const ref = row.sampler === rep.reference;
    tr.append(el("td", {}, row.sampler), el("td", {}, fmt(row.passes_per_image, 0)), el("td", {}, fmt(row.seconds_median, 3)),
              el("td", {}, ref ? "reference" : fmt(row.psnr_mean, 2)), el("td", {}, fmt(row.ssim_mean, 4)),
              el("td", {}, fmt(row.ms_ssim_mean, 4)), el("td", {}, fmt(row.latent_mse_mean, 5)), el("td", {}, fmt(row.alarms, 0)));
    return tr;
  });
  $("#eval-table tbody").replaceChildren(...rows);
  $("#eval-meta").textContent = `${rep.pairs} prompt x seed pair(s), LoRAs of step ${rep.step}; reference ${rep.reference}`;
  $("#eval-verdict").textContent = rep.verdict ? `Verdict: ${rep.verdict}` : "";
  $("#eval-figure").hidden = !rep.grid;
  const src = rep.grid ? `/runs/${runId}/file/${rep.grid}?v=${encodeURIComponent(rep.step)}-${rep.pairs}` : "";
  if (rep.grid && $("#eval-grid").getAttribute("src") !== src) $("#eval-grid").src = src;
}

function runPage() {
  const err = $("#action-error");
  const act = (method, url) => async () => {
    try { showError(err, null); await api(method, url); } catch (e) { showError(err, e); }
  };
  for (const b of ["#stop-btn", "#unqueue-btn", "#cancel-eval-btn"]) $(b).onclick = act("POST", `/api/runs/${runId}/stop`);
  $("#start-btn").onclick = act("POST", `/api/runs/${runId}/start`);
  $("#resume-btn").onclick = act("POST", `/api/runs/${runId}/start`);
  $("#delete-btn").onclick = async () => {
    if (!confirm(`Delete run ${runId} and everything in its folder?`)) return;
    try { await api("DELETE", `/api/runs/${runId}?confirm=${runId}`); location.href = "/"; } catch (e) { showError(err, e); }
  };
  $("#eval").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      showError(err, null);
      await api("POST", `/api/runs/${runId}/eval`, { prompts: $("#e-prompts").value, seeds: $("#e-seeds").value });
    } catch (e) { showError(err, e); }
  });
  const shown = new Set();
  const source = new EventSource(`/api/runs/${runId}/events`);
  source.addEventListener("gone", () => { source.close(); location.href = "/"; });
  source.onmessage = (ev) => {
    const r = JSON.parse(ev.data);
    $("#status").textContent = r.status;
    $("#status").className = `status ${r.status}`;
    $("#phase").textContent = r.phase || "";
    $("#phase").hidden = !r.phase;
    $("#step").textContent = r.step;
    $("#total").textContent = r.total ?? "?";
    $("#eta").textContent = r.flowing ? fmtEta(r.eta) : "";
    $("#eta-box").hidden = !r.flowing;
    $("#rate-box").hidden = !r.per_step;
    $("#loss-now").textContent = Object.entries(r.loss || {}).map(([p, v]) => `${p} ${v.toFixed(4)}`).join(" · ") || "–";
    $("#rate").textContent = r.per_step ? r.per_step.toFixed(2) : "–";
    $("#progress").max = r.total || 1;
    $("#progress").value = r.step || 0;
    $("#queue-pos").textContent = r.queue ? `#${r.queue} in the queue` : "";
    $("#queue-pos").hidden = !r.queue;
    showButtons(r);
    $("#downloads").hidden = !r.downloads.diffusers;
    $("#dl-eval").hidden = !r.downloads.eval;
    drawLoss($("#loss"), r.losses);
    const box = $("#validation");
    if (!shown.size) $("#no-validation").textContent = r.validation_set ? "none yet" : "none yet (set validation_prompt)";
    for (const v of r.validations) {
      if (shown.has(v.grid)) continue;
      if (!shown.size) box.replaceChildren();
      shown.add(v.grid);
      const fig = el("figure", { class: "grid", "data-step": v.step });
      fig.append(el("img", { src: `/runs/${runId}/file/${v.grid}`, alt: `validation grid at step ${v.step}` }),
                 el("figcaption", {}, `step ${v.step}`));
      box.prepend(fig);
    }
    followLog($("#log"), r.log);
    showEval(r);
  };
}

// the Generate page: generate.js; the validation viewer: viewer.js
({ runs: runsPage, new: newPage, run: runPage })[page]?.();
