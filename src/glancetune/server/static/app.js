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
  if (s === null || s === undefined) return "–";
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
      const a = el("a", { href: `/runs/${encodeURIComponent(r.id)}` }, r.name);
      tr.append(el("td"), el("td", { class: `status ${r.status}` }, r.status), el("td"), el("td", {}, fmtEta(r.eta)),
                el("td", {}, new Date(r.created * 1000).toLocaleString()));
      tr.children[0].append(a);
      const p = el("progress", { max: r.total || 1, value: r.step || 0 });
      tr.children[2].append(p, ` ${r.step}/${r.total ?? "?"}`);
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

function newPage() {
  let draft = null;
  const form = $("#new-run"), err = $("#form-error");
  $("#f-images").addEventListener("change", () => {
    const files = $("#f-images").files, box = $("#captions");
    if (files.length < 2) return;
    box.replaceChildren();
    Array.from(files).forEach((f, k) => {
      const d = el("div", { class: "field" });
      d.append(el("label", { for: `f-caption-${k}` }, `caption of ${f.name}`),
               el("textarea", { id: `f-caption-${k}`, name: "captions", rows: 2 }));
      box.append(d);
    });
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(err, null);
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
    } catch (e) { showError(err, e); } finally { $("#plan-btn").disabled = false; }
  });
  $("#start-btn").addEventListener("click", async () => {
    try { await api("POST", `/api/runs/${draft}/start`); location.href = `/runs/${draft}`; } catch (e) { showError(err, e); }
  });
  $("#discard-btn").addEventListener("click", async () => {
    await api("DELETE", `/api/runs/${draft}?confirm=${draft}`).catch(() => {});
    draft = null; $("#plan").hidden = true;
  });
}

// --- one run ----------------------------------------------------------------------------------------------
const COLOURS = { slow: "#d9480f", fast: "#1971c2", lora: "#2f9e44" };

function drawLoss(svg, losses) {
  const all = Object.values(losses).flat();
  svg.replaceChildren();
  if (!all.length) return;
  const W = 520, H = 200, P = 30;
  const maxS = Math.max(...all.map((p) => p[0]), 1), maxL = Math.max(...all.map((p) => p[1]), 1e-9);
  const ns = "http://www.w3.org/2000/svg";
  const frame = document.createElementNS(ns, "rect");
  Object.entries({ x: P, y: 10, width: W - P - 10, height: H - P - 10, fill: "none", stroke: "#ccc" }).forEach(([k, v]) => frame.setAttribute(k, v));
  svg.append(frame);
  for (const [phase, pts] of Object.entries(losses)) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.map(([s, l]) => `${P + (W - P - 10) * s / maxS},${10 + (H - P - 10) * (1 - l / maxL)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLOURS[phase] || "#333");
    line.setAttribute("class", `loss-${phase}`);
    svg.append(line);
  }
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", P); label.setAttribute("y", H - 6); label.setAttribute("font-size", "11");
  label.textContent = `loss per step (slow orange, fast blue); max ${maxL.toFixed(3)}, steps 0..${maxS}`;
  svg.append(label);
}

function runPage() {
  const err = $("#action-error");
  const act = (method, url) => async () => {
    try { showError(err, null); await api(method, url); } catch (e) { showError(err, e); }
  };
  $("#stop-btn").onclick = act("POST", `/api/runs/${runId}/stop`);
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
    $("#step").textContent = r.step;
    $("#total").textContent = r.total ?? "?";
    $("#eta").textContent = fmtEta(r.eta);
    $("#progress").max = r.total || 1;
    $("#progress").value = r.step || 0;
    $("#stop-btn").hidden = !["running", "queued", "evaluating"].includes(r.status);
    $("#eval").hidden = r.status !== "done";
    $("#start-btn").hidden = r.status !== "draft";
    $("#resume-btn").hidden = !["interrupted", "failed"].includes(r.status);
    $("#downloads").hidden = !r.downloads.diffusers;
    $("#dl-eval").hidden = !r.downloads.eval;
    drawLoss($("#loss"), r.losses);
    const box = $("#validation");
    for (const v of r.validations) {
      if (shown.has(v.grid)) continue;
      if (!shown.size) box.replaceChildren();
      shown.add(v.grid);
      const fig = el("figure", { class: "grid", "data-step": v.step });
      fig.append(el("img", { src: `/runs/${runId}/file/${v.grid}`, alt: `validation grid at step ${v.step}` }),
                 el("figcaption", {}, `step ${v.step}`));
      box.prepend(fig);
    }
    $("#log").textContent = r.log;
  };
}

// --- generate ---------------------------------------------------------------------------------------------
function generatePage() {
  const form = $("#generate"), err = $("#gen-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(err, null);
    const body = {};
    for (const k of ["run", "prompts", "seed", "width", "height", "guidance"]) body[k] = form.elements[k].value;
    $("#generate-btn").disabled = true;
    try {
      const r = await api("POST", "/api/generate", body);
      for (const im of r.images.slice().reverse()) {
        const fig = el("figure", { class: "generated" });
        fig.append(el("img", { src: im.url, alt: im.parameters.prompt }),
                   el("figcaption", {}, Object.entries(im.parameters).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("\n")));
        $("#images").prepend(fig);
      }
    } catch (e) { showError(err, e); } finally { $("#generate-btn").disabled = false; }
  });
}

({ runs: runsPage, new: newPage, run: runPage, generate: generatePage })[page]?.();
