// The run page's validation viewer: a label under each grid (its step, and the prompt and seed of each row, from
// /api/runs/ID/validations), a lightbox (click or Enter on a grid; Esc closes, the arrow keys step through the
// grids in step order) and two steps side by side (#compare). app.js draws the grids; this file adds to them.
"use strict";

const viewer = { grids: [], at: 0, box: null, asked: 0 };

function gridUrl(v) { return `/runs/${runId}/file/${v.grid}`; }

function labelOf(v) {
  const frag = document.createDocumentFragment();
  frag.append(el("div", { class: "v-step" }, `step ${v.step}`));
  const list = el("ol", { class: "v-rows" });
  for (const r of v.rows) list.append(el("li", {}, `${JSON.stringify(r.prompt ?? "?")} · seed ${r.seed ?? "?"}`));
  if (v.rows.length) frag.append(list);
  return frag;
}

function labelGrids() {
  for (const fig of document.querySelectorAll("#validation figure.grid")) {
    const v = viewer.grids.find((g) => String(g.step) === fig.dataset.step);
    const img = fig.querySelector("img");
    img.tabIndex = 0;
    img.setAttribute("role", "button");
    img.setAttribute("aria-label", `enlarge the validation grid of step ${fig.dataset.step}`);
    if (!v || fig.dataset.labelled) continue;
    fig.querySelector("figcaption").replaceChildren(labelOf(v));
    fig.dataset.labelled = "1";
  }
}

function lightbox() {
  if (viewer.box) return viewer.box;
  const box = el("div", { id: "lightbox", class: "lightbox", role: "dialog", "aria-modal": "true",
                          "aria-label": "validation grid" });
  const prev = el("button", { type: "button", class: "lb-prev", "aria-label": "previous step" }, "‹");
  const next = el("button", { type: "button", class: "lb-next", "aria-label": "next step" }, "›");
  const close = el("button", { type: "button", class: "lb-close", "aria-label": "close (Esc)" }, "×");
  const fig = el("figure");
  fig.append(el("img", { alt: "" }), el("figcaption"));
  box.append(close, prev, fig, next);
  box.hidden = true;
  prev.onclick = () => showAt(viewer.at - 1);
  next.onclick = () => showAt(viewer.at + 1);
  close.onclick = closeBox;
  box.addEventListener("click", (ev) => { if (ev.target === box) closeBox(); });
  document.body.append(box);
  viewer.box = box;
  return box;
}

function showAt(k) {
  const n = viewer.grids.length;
  if (!n) return;
  viewer.at = (k + n) % n;
  const v = viewer.grids[viewer.at], box = lightbox();
  box.querySelector("img").src = gridUrl(v);
  box.querySelector("img").alt = `validation grid at step ${v.step}`;
  const cap = box.querySelector("figcaption");
  cap.replaceChildren(labelOf(v));
  cap.append(el("div", { class: "meta" }, `${viewer.at + 1} of ${n} · ← → other steps · Esc closes`));
  box.hidden = false;
  box.querySelector(".lb-close").focus({ preventScroll: true });
}

function closeBox() {
  if (!viewer.box || viewer.box.hidden) return;
  viewer.box.hidden = true;
  const back = document.querySelector(`#validation figure.grid[data-step="${viewer.grids[viewer.at]?.step}"] img`);
  back?.focus({ preventScroll: true });
}

function showCompare() {
  const section = $("#compare"), a = $("#cmp-a"), b = $("#cmp-b");
  section.hidden = viewer.grids.length < 2;
  if (section.hidden) return;
  for (const [menu, pick] of [[a, 0], [b, viewer.grids.length - 1]]) {
    const kept = menu.value;
    menu.replaceChildren(...viewer.grids.map((v, k) => el("option", { value: String(k) }, `step ${v.step}`)));
    menu.value = kept && +kept < viewer.grids.length && menu.dataset.user ? kept : String(pick);
  }
  for (const [menu, fig] of [[a, "#cmp-fig-a"], [b, "#cmp-fig-b"]]) {
    const v = viewer.grids[+menu.value], f = $(fig);
    if (f.querySelector("img").getAttribute("src") !== gridUrl(v)) f.querySelector("img").src = gridUrl(v);
    f.querySelector("img").alt = `validation grid at step ${v.step}`;
    f.querySelector("figcaption").replaceChildren(labelOf(v));
  }
}

async function refreshGrids() {
  const shown = document.querySelectorAll("#validation figure.grid").length;
  if (shown === viewer.asked) return;
  viewer.asked = shown;
  try {
    const r = await api("GET", `/api/runs/${runId}/validations`);
    viewer.grids = r.validations.slice().sort((x, y) => x.step - y.step);
  } catch (e) { viewer.asked = 0; return; }
  labelGrids();
  showCompare();
}

function viewerPage() {
  const box = $("#validation");
  new MutationObserver(refreshGrids).observe(box, { childList: true });
  const open = (img) => {
    const step = img.closest("figure.grid")?.dataset.step;
    const k = viewer.grids.findIndex((g) => String(g.step) === step);
    if (k >= 0) showAt(k);
  };
  box.addEventListener("click", (ev) => { if (ev.target.matches("figure.grid img")) open(ev.target); });
  box.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && ev.target.matches("figure.grid img")) { ev.preventDefault(); open(ev.target); }
  });
  document.addEventListener("keydown", (ev) => {
    if (!viewer.box || viewer.box.hidden) return;
    const moves = { ArrowLeft: -1, ArrowRight: 1 };
    if (ev.key === "Escape") closeBox();
    else if (ev.key in moves) showAt(viewer.at + moves[ev.key]);
    else return;
    ev.preventDefault();
  });
  for (const menu of [$("#cmp-a"), $("#cmp-b")]) {
    menu.addEventListener("change", () => { menu.dataset.user = "1"; showCompare(); });
  }
  refreshGrids();
}

if (page === "run") viewerPage();
