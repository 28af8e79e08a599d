// The run page's loss chart: plain SVG with step and loss axes, one line per phase (no chart library, no CDN).
// Loaded before app.js, which calls drawLoss.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const COLOURS = { slow: "#d9480f", fast: "#1971c2", lora: "#2f9e44" };

function ticks(lo, hi, n) {
  const span = hi - lo || 1, raw = span / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => span / s <= n) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function fmtTick(v) {
  const a = Math.abs(v);
  return a !== 0 && (a < 0.01 || a >= 1e4) ? v.toExponential(1) : String(+v.toPrecision(3));
}

function drawLoss(svg, losses) {
  const all = Object.values(losses).flat();
  svg.replaceChildren();
  if (!all.length) { svg.append(svgEl("text", { x: 20, y: 30, class: "axis" }, "no loss logged yet")); return; }
  const W = 640, H = 240, L = 64, R = 12, T = 12, B = 40;
  const maxS = Math.max(...all.map((p) => p[0]), 1);
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (hi - lo < 1e-12) { lo -= Math.abs(lo) * 0.1 + 1e-6; hi += Math.abs(hi) * 0.1 + 1e-6; }
  const x = (s) => L + (W - L - R) * s / maxS, y = (l) => T + (H - T - B) * (1 - (l - lo) / (hi - lo));
  svg.append(svgEl("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#ccc" }));
  for (const v of ticks(0, maxS, 8)) {
    svg.append(svgEl("line", { x1: x(v), x2: x(v), y1: H - B, y2: H - B + 4, stroke: "#888" }),
               svgEl("text", { x: x(v), y: H - B + 15, "text-anchor": "middle", class: "axis tick-x" }, String(v)));
  }
  for (const v of ticks(lo, hi, 5)) {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee" }),
               svgEl("text", { x: L - 5, y: y(v) + 4, "text-anchor": "end", class: "axis tick-y" }, fmtTick(v)));
  }
  svg.append(svgEl("text", { x: L + (W - L - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, "step"),
             svgEl("text", { x: 12, y: T + (H - T - B) / 2, transform: `rotate(-90 12 ${T + (H - T - B) / 2})`,
                             "text-anchor": "middle", class: "axis" }, "loss"));
  let lx = L + 8;
  for (const [phase, pts] of Object.entries(losses)) {
    svg.append(svgEl("polyline", { points: pts.map(([s, l]) => `${x(s)},${y(l)}`).join(" "), fill: "none",
                                   stroke: COLOURS[phase] || "#333", class: `loss-${phase}` }));
    svg.append(svgEl("rect", { x: lx, y: T + 6, width: 12, height: 3, fill: COLOURS[phase] || "#333" }),
               svgEl("text", { x: lx + 16, y: T + 11, class: "axis legend" }, phase));
    lx += 60;
  }
}

