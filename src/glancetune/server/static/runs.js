// A run's page, its files: the checkpoint list (step, size, zip download), the note and Duplicate. Uses app.js's
// helpers ($, el, api, showError); the queue position is shown by app.js from the run's events.
"use strict";

(() => {
  if (document.body.dataset.page !== "run") return;
  const id = encodeURIComponent(document.body.dataset.run), err = $("#action-error");
  const fmtBytes = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB`
    : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
  let last = null;

  async function checkpoints() {
    let r;
    try { r = await api("GET", `/api/runs/${id}/checkpoints`); } catch (e) { return; }  // deleted: app.js leaves
    const text = JSON.stringify(r.checkpoints);
    if (text === last) return;
    last = text;
    $("#checkpoints tbody").replaceChildren(...r.checkpoints.map((c) => {
      const tr = el("tr", { "data-step": c.step }), link = el("td");
      link.append(el("a", { href: c.url }, `checkpoint-${c.step}.zip`));
      tr.append(el("td", {}, String(c.step)), el("td", {}, fmtBytes(c.bytes)), link);
      return tr;
    }));
    $("#no-checkpoints").hidden = r.checkpoints.length > 0;
  }
  checkpoints();
  setInterval(checkpoints, 5000);

  $("#note-btn").onclick = async () => {
    try {
      showError(err, null);
      const r = await api("PUT", `/api/runs/${id}/note`, { note: $("#note").value });
      $("#note").value = r.note;
      $("#note-saved").textContent = "saved";
    } catch (e) { showError(err, e); $("#note-saved").textContent = ""; }
  };
  $("#note").addEventListener("input", () => { $("#note-saved").textContent = ""; });
  $("#duplicate-btn").onclick = async () => {
    try {
      showError(err, null);
      $("#duplicate-btn").disabled = true;
      const r = await api("POST", `/api/runs/${id}/duplicate`);
      location.href = `/runs/${encodeURIComponent(r.id)}`;
    } catch (e) { showError(err, e); } finally { $("#duplicate-btn").disabled = false; }
  };
})();
