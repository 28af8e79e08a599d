// New run page, data: drag and drop of images and their .txt captions, a ZIP unpacked by the server, captions
// prefilled from same-name .txt files, the bucket preview (the server's own bucket code) and a config file read
// into the form. Uses app.js's helpers ($, el, api, applyPreset, showFormError).
"use strict";

(() => {
  if (document.body.dataset.page !== "new") return;
  const input = $("#f-images"), note = $("#drop-note");
  const captionOf = new Map();  // file stem -> caption (from a dropped .txt, the ZIP, or typed before a change)
  const sizes = new WeakMap();  // File -> [width, height]
  const stem = (name) => name.replace(/\.[^./]*$/, "");
  const isImage = (f) => /\.(png|jpe?g|webp)$/i.test(f.name);

  function captionBoxes() {
    const files = Array.from(input.files);
    if (files.length >= 2) return files.map((f, k) => [f, $(`#f-caption-${k}`)]);
    return files.length ? [[files[0], $("#f-caption") || $("#f-caption-0")]] : [];
  }

  function remember() {  // typed captions survive the thumbnails being drawn again
    for (const [f, box] of captionBoxes()) if (box && box.value.trim()) captionOf.set(stem(f.name), box.value);
  }

  function fillCaptions() {
    for (const [f, box] of captionBoxes()) {
      const c = captionOf.get(stem(f.name));
      if (box && c !== undefined && !box.value.trim()) box.value = c;
    }
    showCommand();
  }

  function setFiles(files) {  // the input's list (a later file of the same name replaces the earlier one)
    const byName = new Map();
    for (const f of files) byName.set(f.name, f);
    const dt = new DataTransfer();
    for (const f of byName.values()) dt.items.add(f);
    input.files = dt.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  async function unzip(file) {
    const fd = new FormData();
    fd.append("archive", file);
    const r = await api("POST", "/api/unpack", fd);
    const out = [];
    for (const im of r.images) {
      const blob = await (await fetch(im.data)).blob();
      out.push(new File([blob], im.name, { type: blob.type }));
      if (im.caption) captionOf.set(stem(im.name), im.caption);
    }
    return out;
  }

  async function addFiles(list) {
    remember();
    const images = [], skipped = [];
    let captions = 0;
    for (const f of list) {
      if (/\.txt$/i.test(f.name)) { captionOf.set(stem(f.name), (await f.text()).trim()); captions += 1; }
      else if (/\.zip$/i.test(f.name)) images.push(...await unzip(f));
      else if (isImage(f)) images.push(f);
      else skipped.push(f.name);
    }
    if (images.length) setFiles([...input.files, ...images]); else fillCaptions();
    note.textContent = `added ${images.length} image(s), ${captions} caption file(s)` +
      (skipped.length ? `; skipped (not PNG, JPEG, WEBP, .txt or .zip): ${skipped.join(", ")}` : "");
  }

  const drop = $("#drop");
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    addFiles(Array.from(ev.dataTransfer.files)).catch(showFormError);
  });
  $("#f-zip").addEventListener("change", async () => {
    try { await addFiles(Array.from($("#f-zip").files)); } catch (e) { showFormError(e); }
    $("#f-zip").value = "";
  });
  input.addEventListener("change", () => { fillCaptions(); schedulePreview(); });  // after app.js drew the boxes

  // --- bucket preview ---------------------------------------------------------------------------------------
  async function sizeOf(f) {
    if (!sizes.has(f)) {
      const b = await createImageBitmap(f);
      sizes.set(f, [b.width, b.height]);
      b.close();
    }
    return sizes.get(f);
  }

  let timer = null;
  function schedulePreview() { clearTimeout(timer); timer = setTimeout(preview, 300); }

  async function preview() {
    const files = Array.from(input.files).filter(isImage), box = $("#buckets");
    box.hidden = !files.length;
    if (!files.length) return;
    try {
      const body = { resolution: $("#f-resolution").value.trim(), sizes: await Promise.all(files.map(sizeOf)),
                     model: $("#f-pretrained_model_name_or_path").value.trim(), model_family: $("#f-model_family").value,
                     model_flavour: $("#f-model_flavour").value };
      const r = await api("POST", "/api/buckets", body);
      $("#buckets tbody").replaceChildren(...r.images.map((im, k) => {
        const tr = el("tr", { "data-bucket": im.bucket });
        tr.append(el("td", {}, files[k].name), el("td", {}, im.size.join("×")), el("td", {}, im.target.join("×")),
                  el("td", {}, `${im.bucket} of ${r.buckets.length}`));
        return tr;
      }));
      $("#bucket-note").textContent = `bucket preview: ${r.buckets.length} bucket(s); ${r.note}`;
    } catch (e) {
      $("#buckets tbody").replaceChildren();
      $("#bucket-note").textContent = `bucket preview: ${e.message || e}`;
    }
  }
  for (const id of ["#f-resolution", "#f-pretrained_model_name_or_path", "#f-model_family", "#f-model_flavour"]) {
    $(id)?.addEventListener("change", schedulePreview);
  }

  // --- a config file into the form ------------------------------------------------------------------------
  $("#f-config").addEventListener("change", async () => {
    const f = $("#f-config").files[0];
    if (!f) return;
    const fd = new FormData();
    fd.append("config", f);
    try {
      const r = await api("POST", "/api/config", fd);
      const left = r.left_out.length ? ` (left out, set by the server: ${r.left_out.join(", ")})` : "";
      applyPreset({ settings: r.settings, label: `Config ${r.name}`, source: `the file you loaded${left}` });
      showError($("#form-error"), null);
      schedulePreview();
    } catch (e) { showFormError(e); }
    $("#f-config").value = "";
  });
})();
