// The Generate page: the form, its progress line (the server's per-request state, by server-sent events), the
// ladder choice (the run's own, or a ladder file of its ladders/ folder, uploaded here) and the gallery (each
// image: its prompt and seed, download, "reuse seed", its parameters). Uses app.js's helpers ($, api, el, ...).
"use strict";

function genFigure(im) {
  const p = im.parameters || {};
  const fig = el("figure", { class: "generated" });
  const rest = Object.fromEntries(Object.entries(p).filter(([k]) => k !== "prompt" && k !== "seed"));
  const details = el("details");
  details.append(el("summary", {}, "parameters"), el("pre", { class: "params" }, JSON.stringify(rest, null, 1)));
  const name = im.url.split("/").pop();
  const actions = el("p", { class: "image-actions" });
  const reuse = el("button", { type: "button", class: "secondary reuse" }, "reuse seed");
  reuse.title = "fill the form with this image's prompt and seed";
  reuse.onclick = () => reuseSeed(p);
  actions.append(el("a", { href: im.url, download: name, class: "download" }, "download"), " ", reuse);
  const cap = el("figcaption");
  cap.append(el("div", { class: "caption" }, `prompt: ${JSON.stringify(p.prompt ?? "")}\nseed: ${p.seed ?? "?"}`),
             actions, details);
  fig.append(el("img", { src: im.url, alt: String(p.prompt ?? "generated image") }), cap);
  return fig;
}

function reuseSeed(p) {
  if (typeof p.prompt === "string") $("#g-prompts").value = p.prompt;
  if (Number.isInteger(p.seed)) $("#g-seed").value = String(p.seed);
  const ladder = $("#g-ladder");
  if (p.ladder_file && [...ladder.options].some((o) => o.value === p.ladder_file)) ladder.value = p.ladder_file;
  $("#gen-busy").textContent = `the form holds seed ${p.seed} and its prompt`;
  $("#generate").scrollIntoView({ block: "start" });
  $("#g-prompts").focus({ preventScroll: true });
}

async function loadGallery(run) {
  const box = $("#images");
  box.replaceChildren(el("p", { class: "meta", id: "no-images" }, "none yet"));
  if (!run) return;
  try {
    const r = await api("GET", `/api/runs/${encodeURIComponent(run)}/generated`);
    if (r.images.length) box.replaceChildren(...r.images.map(genFigure));
  } catch (e) { showError($("#gen-error"), e); }
}

async function loadLadders(run, chosen) {
  const menu = $("#g-ladder");
  menu.replaceChildren(el("option", { value: "" }, "the run's own ladder"));
  if (!run) return;
  try {
    const r = await api("GET", `/api/runs/${encodeURIComponent(run)}/ladders`);
    for (const l of r.ladders) {
      const text = l.error ? `${l.name} (unreadable: ${l.error})`
        : `${l.name}: ${l.sigmas.length} sigmas (${l.slow} slow + ${l.fast} fast), searched for ${l.model} at ${l.width}x${l.height}`;
      const o = el("option", { value: l.name }, text);
      if (l.error) o.disabled = true;
      menu.append(o);
    }
    if (chosen) menu.value = chosen;
  } catch (e) { showError($("#gen-error"), e); }
}

async function uploadLadder() {
  const input = $("#g-ladder-file"), run = $("#g-run").value, err = $("#gen-error");
  if (!input.files.length || !run) return;
  showError(err, null);
  const fd = new FormData();
  fd.append("file", input.files[0]);
  try {
    const r = await api("POST", `/api/runs/${encodeURIComponent(run)}/ladders`, fd);
    await loadLadders(run, r.name);
    $("#gen-busy").textContent = `ladder file ${r.name} stored in the run's ladders/ folder`;
  } catch (e) { showError(err, e); } finally { input.value = ""; }
}

// The server's progress of this page's request (a newer request number than before it was sent).
function followProgress(before) {
  const source = new EventSource("/api/generate/events");
  source.onmessage = (ev) => {
    const p = JSON.parse(ev.data);
    if (p.request > before && p.state !== "done" && p.state !== "failed") $("#gen-busy").textContent = `${p.message}…`;
  };
  return source;
}

function generatePage() {
  const form = $("#generate"), err = $("#gen-error");
  const run = () => $("#g-run").value;
  loadGallery(run());
  loadLadders(run());
  $("#g-run").addEventListener("change", () => { loadGallery(run()); loadLadders(run()); });
  $("#g-ladder-file").addEventListener("change", uploadLadder);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(err, null);
    const body = {};
    for (const k of ["run", "prompts", "seed", "width", "height", "guidance", "ladder"]) body[k] = form.elements[k].value;
    $("#generate-btn").disabled = true;
    $("#gen-busy").textContent = "sending…";
    let source = null;
    try {
      const before = (await api("GET", "/api/generate/progress")).request;
      source = followProgress(before);
      const r = await api("POST", "/api/generate", body);
      $("#no-images")?.remove();
      for (const im of r.images.slice().reverse()) $("#images").prepend(genFigure(im));
      $("#gen-busy").textContent = `done: ${r.images.length} image(s) in ${r.seconds.toFixed(1)} s`;
    } catch (e) { showError(err, e); $("#gen-busy").textContent = ""; } finally {
      source?.close();
      $("#generate-btn").disabled = false;
    }
  });
}

if (page === "generate") generatePage();
