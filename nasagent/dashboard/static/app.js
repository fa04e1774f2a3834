// nasagent dashboard: one page, hash routes, polling with ETags, SVG charts drawn here.
//
// Safety: the DOM is built with createElement and text nodes only (never parsed as markup), so an
// experiment name, an architecture or a failure reason is always shown as text, whatever it holds.
// Every request is relative to the page, so the dashboard works behind a path prefix (Kubeflow).
"use strict";

const POLL_MS = 1000;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
const SVG_NS = "http://www.w3.org/2000/svg";

// -- DOM helpers ------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en");
    return value.toFixed(digits);
  }
  return String(value);
}

function limitsCard(status) {
  // The objective and limits of the experiment (none: the paper's accuracy, no card).
  const o = status.objective || {};
  const l = status.limits || {};
  const lines = [];
  if (o.kind === "mnas") lines.push(`accuracy × (${o.metric} / ${fmt(o.target)})^${o.weight}`);
  if (l.max_params !== null && l.max_params !== undefined) lines.push(`≤ ${fmt(l.max_params)} parameters`);
  if (l.max_macs !== null && l.max_macs !== undefined) lines.push(`≤ ${fmt(l.max_macs)} MACs`);
  if (l.max_latency_ms !== null && l.max_latency_ms !== undefined) lines.push(`latency ≤ ${l.max_latency_ms} ms (penalised past it)`);
  if (!lines.length) return null;
  return card(o.kind === "mnas" ? "best reward" : "limits", el("span", { id: "objective" },
    o.kind === "mnas" ? fmt(status.best_reward) : lines[0]), lines.map((line) => el("div", { class: "muted" }, line)));
}

function statusText(t) {
  // A trial stopped early (--early-stop): the epoch it stopped after and, for predict, its predicted accuracy.
  if (t.status !== "stopped") return t.status;
  const at = t.stopped_epoch ? ` after epoch ${t.stopped_epoch}` : "";
  const predicted = t.predicted_accuracy === null || t.predicted_accuracy === undefined ? "" : `, predicted ${fmt(t.predicted_accuracy)}`;
  return `stopped${at}${predicted}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  const h = Math.floor(s / 3600);
  if (h < 48) return `${h} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function link(hash, text) {
  return el("a", { href: hash }, text);
}

function experimentHash(name) {
  return "#/experiment/" + encodeURIComponent(name);
}

function table(headers, rows, opts = {}) {
  const head = el("tr", {}, headers.map((h) => {
    const spec = typeof h === "string" ? { label: h } : h;
    const cls = [spec.num ? "num" : "", spec.sortable ? "sortable" : "", spec.sorted ? `sorted-${spec.sorted}` : ""];
    return el("th", { class: cls.join(" ").trim() || null, onclick: spec.onclick, "data-key": spec.key }, spec.label);
  }));
  const body = rows.map((row) => {
    const cells = row.cells || row;
    return el("tr", { class: row.cls || null, "data-id": row.id }, cells.map((cell, i) => {
      const spec = typeof headers[i] === "string" ? {} : headers[i];
      return el("td", { class: spec.num ? "num" : null }, cell);
    }));
  });
  return el("table", { class: opts.cls || null }, el("thead", {}, head), el("tbody", {}, body));
}

function card(label, value, extra) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), extra);
}

function progressBar(done, total) {
  const share = total ? Math.min(100, (100 * done) / total) : 0;
  return el("div", { class: "bar", title: `${done} of ${total}` }, el("span", { style: null, "data-share": share }));
}

// Widths come from data attributes: the Content-Security-Policy allows no inline style attributes.
function sizeBars(root) {
  for (const span of root.querySelectorAll("[data-share]")) span.style.width = span.dataset.share + "%";
  for (const span of root.querySelectorAll("[data-grow]")) span.style.flexGrow = span.dataset.grow;
}

// -- data -------------------------------------------------------------------------------------------

const etags = new Map(); // path -> last ETag seen
let lastOk = 0;

// The JSON of ``path`` and whether it changed since the last call for the same path. The browser's
// cache revalidates with If-None-Match; a 304 comes back to us as the cached 200 with the same ETag.
async function api(path) {
  const response = await fetch(path, { cache: "no-cache" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  lastOk = Date.now();
  const etag = response.headers.get("ETag");
  const changed = etag === null || etags.get(path) !== etag;
  etags.set(path, etag);
  return { data: body, changed };
}

function query(params) {
  const parts = [];
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) parts.push(`${key}=${encodeURIComponent(v)}`);
  }
  return parts.join("&");
}

// -- charts -----------------------------------------------------------------------------------------

const chartState = new Map(); // chart id -> {hidden: Set, zoom: [x0, x1] | null}, kept across redraws

function niceTicks(lo, hi, count = 5, integer = false) {
  if (!(hi > lo)) return [lo];
  const raw = Math.max((hi - lo) / count, integer ? 1 : 0);
  const step = Math.pow(10, Math.floor(Math.log10(raw)));
  const err = raw / step;
  const nice = step * (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1);
  const ticks = [];
  for (let t = Math.ceil(lo / nice) * nice; t <= hi + nice * 1e-9; t += nice) ticks.push(+t.toFixed(12));
  return ticks;
}

function tickLabel(t) {
  if (Math.abs(t) >= 1000) return t.toLocaleString("en");
  return String(+t.toPrecision(4));
}

// A chart: series of points (dots), lines, steps or bars over x. ``opts``: id (keeps legend and zoom
// state across redraws), title, xLabel, yLabel, yDomain, series [{name, kind, color, points:
// [[x, y, tip, target]]}], onPick(target). Hover shows the nearest point's tip; a click follows its
// target; dragging zooms along x, a double click zooms out; the legend toggles series.
function chart(opts) {
  const W = opts.width || 640, H = opts.height || 300;
  const M = { l: 52, r: 26, t: opts.title ? 24 : 10, b: 40 };
  const state = chartState.get(opts.id) || { hidden: new Set(), zoom: null };
  chartState.set(opts.id, state);
  const visible = opts.series.filter((s) => !state.hidden.has(s.name));
  const all = visible.flatMap((s) => s.points.concat(s.kind === "bars" ? s.points.map((p) => [p[4], p[1]]) : []));
  let [x0, x1] = state.zoom || [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  if (!isFinite(x0)) [x0, x1] = [0, 1];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const inRange = all.filter((p) => p[0] >= x0 && p[0] <= x1 && p[1] !== null);
  let [y0, y1] = opts.yDomain || [Math.min(...inRange.map((p) => p[1])), Math.max(...inRange.map((p) => p[1]))];
  if (!isFinite(y0)) [y0, y1] = [0, 1];
  if (y0 === y1) [y0, y1] = [y0 - 0.05, y1 + 0.05];
  if (!opts.yDomain) { const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad; }
  const sx = (x) => M.l + ((x - x0) / (x1 - x0)) * (W - M.l - M.r);
  const sy = (y) => H - M.b - ((y - y0) / (y1 - y0)) * (H - M.t - M.b);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || opts.yLabel || "chart" });
  root.appendChild(svg("defs", {}, svg("clipPath", { id: `clip-${opts.id}` },
    svg("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b }))));
  const axis = svg("g", { class: "axis" });
  for (const t of niceTicks(y0, y1)) {
    axis.appendChild(svg("line", { class: "grid-line", x1: M.l, x2: W - M.r, y1: sy(t), y2: sy(t) }));
    axis.appendChild(svg("text", { x: M.l - 6, y: sy(t) + 4, "text-anchor": "end" }, tickLabel(t)));
  }
  for (const t of niceTicks(x0, x1, 6, opts.integerX)) {
    axis.appendChild(svg("line", { x1: sx(t), x2: sx(t), y1: H - M.b, y2: H - M.b + 4 }));
    axis.appendChild(svg("text", { x: sx(t), y: H - M.b + 16, "text-anchor": "middle" }, tickLabel(t)));
  }
  axis.appendChild(svg("path", { d: `M${M.l},${M.t}V${H - M.b}H${W - M.r}`, fill: "none" }));
  if (opts.xLabel) axis.appendChild(svg("text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle" }, opts.xLabel));
  if (opts.yLabel) {
    axis.appendChild(svg("text", { x: -(M.t + H - M.b) / 2, y: 13, transform: "rotate(-90)", "text-anchor": "middle" },
      opts.yLabel));
  }
  if (opts.title) root.appendChild(svg("text", { class: "title", x: M.l, y: 15 }, opts.title));
  root.appendChild(axis);

  const plot = svg("g", { "clip-path": `url(#clip-${opts.id})` });
  const pickable = [];
  opts.series.forEach((s, index) => {
    const color = s.color || PALETTE[index % PALETTE.length];
    const group = svg("g", { class: "series", "data-name": s.name, "data-count": s.points.length });
    if (state.hidden.has(s.name)) { plot.appendChild(group); return; }
    const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (s.kind === "bars") {
      for (const p of pts) {
        group.appendChild(svg("rect", { x: sx(p[0]), width: Math.max(1, sx(p[4]) - sx(p[0])), y: sy(p[1]),
          height: Math.max(0, H - M.b - sy(p[1])), fill: color, opacity: 0.35 }));
      }
    } else if (s.kind === "line" || s.kind === "step") {
      let d = "";
      pts.forEach((p, i) => {
        if (i === 0) d += `M${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`;
        else if (s.kind === "step") d += `H${sx(p[0]).toFixed(1)}V${sy(p[1]).toFixed(1)}`;
        else d += `L${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`;
      });
      group.appendChild(svg("path", { d, fill: "none", stroke: color, "stroke-width": s.width || 2 }));
      if (s.dots) {
        let dots = "";
        for (const p of pts) dots += `M${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}h0`;
        group.appendChild(svg("path", { d: dots, stroke: color, "stroke-width": 6, "stroke-linecap": "round" }));
      }
    } else {
      // Thousands of dots as one path of zero-length round-capped segments: one DOM node.
      let d = "";
      for (const p of pts) d += `M${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}h0`;
      group.appendChild(svg("path", { d, stroke: color, "stroke-width": s.size || 4, "stroke-linecap": "round",
        opacity: s.opacity || 0.75 }));
    }
    // A bar is picked at its middle; p[3], where given, is where a click on the point leads.
    if (s.kind === "bars") for (const p of pts) pickable.push({ p: [(p[0] + p[4]) / 2, p[1], p[2]], s, color });
    else for (const p of pts) pickable.push({ p, s, color });
    plot.appendChild(group);
  });
  root.appendChild(plot);

  const zoomBox = svg("rect", { class: "zoom-box", y: M.t, height: H - M.t - M.b, width: 0, visibility: "hidden" });
  root.appendChild(zoomBox);
  const overlay = svg("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "transparent" });
  root.appendChild(overlay);

  const wrapper = el("div", { class: "chart", id: `chart-${opts.id}` });
  const tip = document.getElementById("tooltip");
  const toSvg = (event) => {
    const box = root.getBoundingClientRect();
    return [((event.clientX - box.left) / box.width) * W, ((event.clientY - box.top) / box.height) * H];
  };
  const nearest = (event) => {
    const [mx, my] = toSvg(event);
    let best = null, bestD = 18 * 18;
    for (const item of pickable) {
      const dx = sx(item.p[0]) - mx, dy = sy(item.p[1]) - my, d = dx * dx + dy * dy;
      if (d < bestD && item.p[0] >= x0 && item.p[0] <= x1) { best = item; bestD = d; }
    }
    return best;
  };
  let dragFrom = null;
  overlay.addEventListener("mousemove", (event) => {
    if (dragFrom !== null) {
      const x = toSvg(event)[0];
      zoomBox.setAttribute("x", Math.min(dragFrom, x));
      zoomBox.setAttribute("width", Math.abs(x - dragFrom));
      return;
    }
    const hit = nearest(event);
    if (!hit) { tip.hidden = true; overlay.style.cursor = "crosshair"; return; }
    tip.textContent = hit.p[2] || `${s_name(hit.s)}: ${fmt(hit.p[0])}, ${fmt(hit.p[1])}`;
    tip.hidden = false;
    tip.style.left = event.clientX + 14 + "px";
    tip.style.top = event.clientY + 12 + "px";
    overlay.style.cursor = hit.p[3] && opts.onPick ? "pointer" : "crosshair";
  });
  overlay.addEventListener("mouseleave", () => { tip.hidden = true; });
  overlay.addEventListener("mousedown", (event) => {
    dragFrom = toSvg(event)[0];
    zoomBox.setAttribute("visibility", "visible");
  });
  overlay.addEventListener("mouseup", (event) => {
    const from = dragFrom;
    dragFrom = null;
    zoomBox.setAttribute("visibility", "hidden");
    const to = toSvg(event)[0];
    if (from !== null && Math.abs(to - from) > 6) {
      const inv = (px) => x0 + ((px - M.l) / (W - M.l - M.r)) * (x1 - x0);
      state.zoom = [inv(Math.min(from, to)), inv(Math.max(from, to))];
      redraw();
      return;
    }
    const hit = nearest(event);
    if (hit && hit.p[3] && opts.onPick) opts.onPick(hit.p[3]);
  });
  overlay.addEventListener("dblclick", () => { state.zoom = null; redraw(); });
  const redraw = () => { tip.hidden = true; wrapper.replaceWith(chart(opts)); };

  const legend = el("div", { class: "legend" }, opts.series.filter((s) => !s.noLegend).map((s, index) => {
    const color = s.color || PALETTE[opts.series.indexOf(s) % PALETTE.length];
    const swatch = el("span", { class: "swatch", "data-color": color });
    return el("button", {
      class: state.hidden.has(s.name) ? "off" : null, type: "button", title: "show or hide",
      onclick: () => { state.hidden.has(s.name) ? state.hidden.delete(s.name) : state.hidden.add(s.name); redraw(); },
    }, swatch, s.name);
  }));
  for (const swatch of legend.querySelectorAll("[data-color]")) swatch.style.background = swatch.dataset.color;
  append(wrapper, [legend, root]);
  if (state.zoom) append(wrapper, [el("div", { class: "muted" }, "zoomed: double-click the chart to zoom out")]);
  return wrapper;
}

function s_name(series) {
  return series.name;
}

function curveChart(id, epochs, title, height) {
  const points = epochs.map((e) => [e.epoch, e.val_accuracy,
    `epoch ${e.epoch}: val. accuracy ${fmt(e.val_accuracy)}, loss ${fmt(e.train_loss)}, lr ${fmt(e.lr, 6)}` +
    `${e.restarts ? `, after ${e.restarts} restart(s)` : ""}, ${fmt(e.seconds, 2)} s`]);
  const loss = epochs.map((e) => [e.epoch, e.train_loss, `epoch ${e.epoch}: training loss ${fmt(e.train_loss)}`]);
  return chart({
    id, title, height: height || 220, xLabel: "epoch", yLabel: "value", integerX: true,
    series: [
      { name: "validation accuracy", kind: "line", dots: true, points },
      { name: "training loss", kind: "line", dots: true, points: loss, color: "#ff7f0e" },
    ],
  });
}

// -- views ------------------------------------------------------------------------------------------

const main = () => document.getElementById("main");
let view = null; // {render: async (first) => void}

function errorBox(error) {
  return el("p", { class: "error" }, String(error.message || error));
}

function section(id) {
  let node = document.getElementById(id);
  if (!node) node = el("section", { id });
  return node;
}

function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  sizeBars(node);
  return node;
}

function experimentsView() {
  const selected = new Set();
  return {
    async render() {
      const { data, changed } = await api("api/experiments");
      if (!changed && document.getElementById("experiments")) return;
      const box = section("experiments");
      const rows = data.experiments.map((e) => ({
        id: e.name,
        cells: [
          el("input", { type: "checkbox", "aria-label": `compare ${e.name}`, checked: selected.has(e.name),
            onchange: (ev) => { ev.target.checked ? selected.add(e.name) : selected.delete(e.name); } }),
          link(experimentHash(e.name), e.name), e.strategy, e.dataset, e.space,
          el("span", {}, `${fmt(e.trained)} / ${fmt(e.budget)}`, progressBar(e.trained, e.budget)),
          fmt(e.running), fmt(e.failed), fmt(e.best_accuracy), el("span", { class: `state-${e.state}` }, e.state),
          when(e.last_activity),
        ],
      }));
      const compare = el("button", { type: "button", onclick: () => {
        if (selected.size) location.hash = "#/compare?" + query({ name: [...selected] });
      } }, "compare selected");
      fill(main(), el("h1", {}, "Experiments"),
        fill(box, data.experiments.length ? [el("div", { class: "toolbar" }, compare),
          table(["", "name", "strategy", "dataset", "space", "trained", { label: "running", num: true },
            { label: "failed", num: true }, { label: "best accuracy", num: true }, "state", "last activity"], rows,
          { cls: "experiments" })] : el("p", { class: "muted" }, "No experiment in this database yet.")));
    },
  };
}

function experimentView(name) {
  const board = { sort: "accuracy", order: "desc", offset: 0, status: "", limit: 25 };
  const base = query({ name });
  let skeleton = false;
  const ensureSkeleton = () => {
    if (skeleton && document.getElementById("summary")) return;
    skeleton = true;
    fill(main(), el("h1", {}, "Experiment ", el("code", { id: "experiment-name" }, name)),
      section("summary"), el("h2", {}, "Running trials"), section("running"),
      el("h2", {}, "Accuracy per model (Figure 3)"), section("fig3"),
      el("h2", {}, "Leaderboard"), section("leaderboard"),
      el("h2", {}, "Failures"), section("failures"),
      el("h2", { id: "strategy-title" }, "What the strategy learnt"), section("strategy"),
      el("h2", {}, "Time and configuration"), section("timing"));
  };
  const renderSummary = (d) => {
    const s = d.status;
    const state = s.finished ? "finished" : s.running ? "running" : "stopped";
    const eps = d.schedule;
    fill(section("summary"),
      el("p", {}, el("span", { class: `state-${state}`, id: "state" }, state), ` · strategy ${s.strategy} · dataset `,
        el("code", {}, s.dataset), ` · `, link("#/compare?" + query({ name }), "compare with others")),
      el("div", { class: "cards" },
        card("models trained", el("span", { id: "trained" }, `${fmt(s.unique_trained)} / ${fmt(s.budget)}`),
          progressBar(s.unique_trained, s.budget)),
        card("running", el("span", { id: "running-count" }, fmt(s.running))),
        card("failed", fmt(s.failed)),
        card("best accuracy", el("span", { id: "best" }, fmt(s.best_accuracy))),
        limitsCard(s),
        card("time left", s.finished ? "done" : duration(d.eta.seconds_left),
          el("div", { class: "muted" }, d.eta.trials_per_hour ? `${fmt(d.eta.trials_per_hour, 1)} models/h` : "")),
        card("ε", fmt(s.epsilon, 2)),
        card("infrastructure failures", fmt(s.infra_failures))),
      eps ? [el("h2", {}, `ε schedule: step ${eps.index + 1} of ${eps.steps.length}, ${eps.in_step} of ` +
        `${eps.steps[eps.index].count} models at ε = ${eps.epsilon}`),
      el("div", { class: "schedule", id: "schedule" }, eps.steps.map((st, i) =>
        el("span", { class: i < eps.index ? "done" : i === eps.index ? "current" : null, "data-grow": st.count,
          title: `ε = ${st.epsilon}: ${st.count} models` }, `ε ${st.epsilon}`)))] : null,
      s.exhausted ? el("p", { class: "note" }, s.exhausted) : null);
  };
  const renderFig3 = (d) => {
    const f = d.fig3;
    if (!f.accuracies.length) return fill(section("fig3"), el("p", { class: "muted" }, "No model has finished yet."));
    const failed = new Set(f.failed);
    const points = [], bad = [];
    f.accuracies.forEach((a, i) => {
      const p = [i + 1, a, `model ${i + 1} (trial ${f.trial_ids[i]}): ${fmt(a)}${failed.has(i) ? " (failed)" : ""}`,
        `#/trial/${f.trial_ids[i]}`];
      (failed.has(i) ? bad : points).push(p);
    });
    const rolling = f.rolling_mean.map((m, j) => [f.rolling_start + j, m, `rolling mean at ${f.rolling_start + j}: ${fmt(m)}`]);
    const groups = f.groups.map((g) => [g.first - 0.5, g.mean,
      `ε = ${g.epsilon === null ? "none" : g.epsilon}: mean ${fmt(g.mean)} over ${g.count} models`, null, g.last + 0.5]);
    fill(section("fig3"), el("p", { class: "muted" },
      `${fmt(f.accuracies.length)} models in launch order; rolling mean over ${f.window}; ${fmt(f.replay_samples)} ` +
      `rewarded samples, ${fmt(f.dictionary_hits)} replay-dictionary hits. Click a dot for its trial; drag to zoom.`),
    chart({
      id: "fig3", width: 1100, height: 340, xLabel: "models trained (launch order)", yLabel: "validation accuracy",
      integerX: true,
      onPick: (target) => { location.hash = target; },
      series: [
        { name: "mean per ε", kind: "bars", points: groups, color: "#8fb9de" },
        { name: "model accuracy", kind: "points", points, color: "#555", size: f.accuracies.length > 2000 ? 3 : 5 },
        { name: "failed (chance reward)", kind: "points", points: bad, color: "#d62728", size: 6 },
        { name: `rolling mean (${f.window})`, kind: "line", points: rolling, color: "#1f77b4" },
      ],
    }));
  };
  const renderFailures = (d) => {
    fill(section("failures"),
      d.failure_reasons.length ? table(["reason", { label: "trials", num: true }],
        d.failure_reasons.map((r) => [r.failure, fmt(r.count)]), { cls: "failure-reasons" })
        : el("p", { class: "muted" }, "No architecture failed."),
      el("h3", {}, `Infrastructure failures (${fmt(d.status.infra_failures)}; never rewarded, trained again)`),
      d.infra_failures.length ? table(["when", "trial", "kind", "reason", "where"], d.infra_failures.map((f) =>
        [when(f.at), f.trial_id ? link(`#/trial/${f.trial_id}`, String(f.trial_id)) : "–", f.fault, f.reason,
          f.worker || "–"]), { cls: "infra-failures" }) : el("p", { class: "muted" }, "None."));
  };
  const renderStrategy = (d) => {
    const q = d.q;
    const node = section("strategy");
    if (q.by_type.length) {
      const series = (curves) => curves.map((c) => ({ name: c.label, kind: "line", dots: true,
        points: c.depths.map((depth, i) => [depth, c.means[i], `${c.label}, depth ${depth}: mean Q ${fmt(c.means[i])} ` +
          `over ${c.counts[i]} entries`]) }));
      const qline = { name: `Q₀ = ${q.q_init}`, kind: "line", color: "#999", width: 1,
        points: [[1, q.q_init], [Math.max(...q.by_type.flatMap((c) => c.depths)), q.q_init]] };
      fill(node, el("p", { class: "muted" }, `Mean of the ${fmt(q.entries)} updated Q-values against the depth ` +
        "of the layer each action adds (Figures A3 and A4 of the MetaQNN paper)."),
      el("div", { class: "grid" },
        el("div", { class: "panel" }, chart({ id: "figA3", title: "per layer type (Fig A3)", xLabel: "layer depth",
          yLabel: "mean Q", integerX: true, series: [...series(q.by_type), qline] })),
        el("div", { class: "panel" }, chart({ id: "figA4", title: "convolutions per receptive field (Fig A4)",
          xLabel: "layer depth", yLabel: "mean Q", integerX: true, series: [...series(q.by_kernel), qline] }))));
    } else {
      const summary = Object.entries(d.status.strategy_summary || {});
      fill(node, q.note ? el("p", { class: "muted" }, q.note) : null,
        summary.length ? table(["the strategy reports", "value"], summary.map(([k, v]) =>
          [k, typeof v === "object" ? JSON.stringify(v) : fmt(v)]), { cls: "strategy-summary" })
          : el("p", { class: "muted" }, "The strategy reports nothing about itself."));
    }
  };
  const renderTiming = (d) => {
    const t = d.timing;
    fill(section("timing"), table(["", "value"], [
      ["trials finished", fmt(t.trials)], ["mean training time", duration(t.train_seconds_mean)],
      ["median wall time", duration(t.wall_seconds_median)], ["span", duration(t.span_seconds)],
      ["models per hour", fmt(t.trials_per_hour, 1)],
      ...Object.entries(d.config).map(([k, v]) => [`config: ${k}`, typeof v === "object" ? JSON.stringify(v) : String(v)]),
    ]));
  };
  const renderRunning = (live) => {
    document.getElementById("running-count")?.replaceChildren(fmt(live.counts.running));
    const node = section("running");
    if (!live.running.length) return fill(node, el("p", { class: "muted" }, "No trial is running."));
    fill(node, el("div", { class: "grid" }, live.running.map((t) => el("div", {
      class: "panel running-trial", "data-trial": t.id, "data-epochs": t.curve.length },
    el("div", {}, link(`#/trial/${t.id}`, `trial ${t.id}`), ` · ${t.worker || "–"} · started ${when(t.started_at)}` +
      ` · attempt ${t.attempts} · ${t.curve.length} epoch(s)`),
    el("div", { class: "arch" }, t.arch),
    t.curve.length ? curveChart(`run-${t.id}`, t.curve, null, 200) : el("p", { class: "muted" }, "first epoch training…")))));
  };
  const renderBoard = async () => {
    const path = "api/trials?" + query({ name, sort: board.sort, order: board.order, offset: board.offset,
      limit: board.limit, status: board.status });
    const { data } = await api(path);
    const header = (label, key, num = true) => ({ label, key, num, sortable: true,
      sorted: board.sort === key ? board.order : null,
      onclick: () => {
        board.order = board.sort === key && board.order === "desc" ? "asc" : "desc";
        board.sort = key; board.offset = 0; renderBoard();
      } });
    const filter = el("select", { "aria-label": "status", onchange: (ev) => { board.status = ev.target.value; board.offset = 0; renderBoard(); } },
      ["", "done", "stopped", "failed", "running"].map((s) => el("option", { value: s, selected: board.status === s }, s || "all trials")));
    const last = Math.min(data.offset + data.limit, data.total);
    // A reward column when the objective is not the accuracy itself (--objective mnas, --max-latency-ms).
    const rewarded = board.sort === "reward" || data.trials.some((t) => t.reward !== null && t.reward !== t.accuracy);
    fill(section("leaderboard"),
      el("div", { class: "toolbar" }, filter, el("span", { class: "muted" },
        `${fmt(data.total ? data.offset + 1 : 0)}–${fmt(last)} of ${fmt(data.total)}`),
      el("button", { type: "button", disabled: data.offset === 0,
        onclick: () => { board.offset = Math.max(0, board.offset - board.limit); renderBoard(); } }, "previous"),
      el("button", { type: "button", disabled: last >= data.total,
        onclick: () => { board.offset += board.limit; renderBoard(); } }, "next")),
      table([{ label: "#", num: true }, header("accuracy", "accuracy"), ...(rewarded ? [header("reward", "reward")] : []),
        header("params", "params"), header("MACs", "macs"), header("latency ms", "latency"), header("ε", "epsilon"),
        header("time", "time"), header("trial", "id"), { label: "status" }, { label: "architecture" }],
      data.trials.map((t, i) => ({ id: t.id, cls: t.status === "failed" ? "failed" : null, cells: [
        fmt(data.offset + i + 1), fmt(t.accuracy), ...(rewarded ? [fmt(t.reward)] : []), fmt(t.params), fmt(t.macs),
        fmt(t.latency_ms, 3), fmt(t.epsilon, 2), duration(t.train_seconds),
        link(`#/trial/${t.id}`, String(t.id)), statusText(t), el("span", { class: "arch", title: t.failure || "" }, t.arch)] })),
      { cls: "leaderboard" }));
  };
  return {
    async render() {
      ensureSkeleton();
      const first = !document.querySelector("#summary .cards");
      const board = first ? renderBoard() : null; // the first visit asks for everything at once
      const [summary, live] = await Promise.all([api("api/experiment?" + base), api("api/live?" + base)]);
      if (summary.changed || first) {
        renderSummary(summary.data);
        renderFig3(summary.data);
        renderFailures(summary.data);
        renderStrategy(summary.data);
        renderTiming(summary.data);
        await (board || renderBoard());
      }
      if (live.changed || !section("running").childElementCount) renderRunning(live.data);
    },
  };
}

function compareView(names) {
  return {
    async render() {
      const { data, changed } = await api("api/compare?" + query({ name: names }));
      if (!changed && document.getElementById("compare")) return;
      const series = data.series.map((s) => ({
        name: `${s.experiment} (${s.strategy}, seed ${s.seed})`, kind: "step",
        points: s.best_so_far.map(([i, best]) => [i, best, `${s.experiment}: best ${fmt(best)} after ${fmt(i)} models`]),
      }));
      fill(main(), el("h1", {}, "Comparison"), fill(section("compare"),
        chart({ id: "compare", width: 1100, height: 380, xLabel: "models trained", yLabel: "best accuracy so far",
          integerX: true, series }),
        table(["experiment", "strategy", "seed", "dataset", { label: "models trained", num: true },
          { label: "best accuracy", num: true }], data.series.map((s) => [link(experimentHash(s.experiment), s.experiment),
          s.strategy, fmt(s.seed), s.dataset, fmt(s.trained), fmt(s.best_accuracy)]), { cls: "comparison" })));
    },
  };
}

function trialView(id) {
  return {
    async render() {
      const { data: d, changed } = await api("api/trial?" + query({ id }));
      if (!changed && document.getElementById("trial")) return;
      const t = d.trial;
      const runs = d.runs.map((r, i) => curveChart(`trial-${id}-${r.attempt}-${r.run}`, r.epochs,
        `attempt ${r.attempt}${r.run > 1 ? `, run ${r.run}` : ""}${i === d.runs.length - 1 ? " (latest)" : ""}`));
      const layers = d.layers;
      const checkpoint = d.checkpoint;
      fill(main(), el("h1", {}, `Trial ${t.id} of `, link(experimentHash(d.experiment), d.experiment)),
        fill(section("trial"),
          el("dl", { class: "facts" },
            el("dt", {}, "architecture"), el("dd", { class: "arch", id: "trial-arch" }, t.arch),
            el("dt", {}, "status"), el("dd", { id: "trial-status" }, statusText(t)),
            el("dt", {}, "accuracy"), el("dd", {}, fmt(t.accuracy)),
            el("dt", {}, "parameters"), el("dd", {}, fmt(t.params)),
            el("dt", {}, "MACs"), el("dd", { id: "trial-macs" }, fmt(t.macs)),
            el("dt", {}, "latency (batch 1)"), el("dd", { id: "trial-latency" },
              t.latency_ms === null || t.latency_ms === undefined ? "–" : `${fmt(t.latency_ms, 3)} ms`),
            el("dt", {}, "reward"), el("dd", { id: "trial-reward" }, fmt(t.reward)),
            el("dt", {}, "ε"), el("dd", {}, fmt(t.epsilon, 2)),
            el("dt", {}, "worker"), el("dd", {}, t.worker || "–"),
            el("dt", {}, "attempts"), el("dd", {}, fmt(t.attempts)),
            t.failure ? [el("dt", {}, t.status === "stopped" ? "why stopped" : "failure"), el("dd", { id: "trial-failure" }, t.failure)] : null,
            el("dt", {}, "launched"), el("dd", {}, when(d.created_at)),
            el("dt", {}, "started"), el("dd", {}, when(t.started_at)),
            el("dt", {}, "finished"), el("dd", {}, when(t.finished_at)),
            el("dt", {}, "training time"), el("dd", {}, duration(t.train_seconds)),
            el("dt", {}, "wall time"), el("dd", {}, duration(d.wall_seconds)),
            el("dt", {}, "checkpoint"), el("dd", {}, checkpoint === null ? "– (no artifact store given, or running)"
              : checkpoint.kept ? el("a", { href: "api/checkpoint?" + query({ id }), download: `trial-${id}.pt` },
                `download ${checkpoint.key}`) : "not kept (only the top trials' weights are)")),
          el("h2", {}, "Layers"), el("p", { class: "muted" }, layers.note || ""),
          table(["#", "layer", "output (C × H × W)", { label: "parameters", num: true }], layers.layers.map((l, i) =>
            [fmt(i + 1), el("code", {}, l.layer), l.output ? l.output.join(" × ") : "–", fmt(l.params)]),
          { cls: "layers" }),
          layers.total_params !== null ? el("p", {}, `total ${fmt(layers.total_params)} parameters`) : null,
          el("h2", {}, "Learning curve"),
          runs.length ? el("div", { class: "grid" }, runs.map((c) => el("div", { class: "panel" }, c)))
            : el("p", { class: "muted" }, "No epoch recorded."),
          d.infra_failures.length ? [el("h2", {}, "Infrastructure failures"), table(["when", "kind", "reason", "where"],
            d.infra_failures.map((f) => [when(f.at), f.fault, f.reason, f.worker || "–"]))] : null,
          el("h2", {}, "Recorded by the worker"),
          table(["key", "value"], Object.entries(d.info).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]))));
    },
  };
}

// -- routing and polling ----------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  chartState.clear();
  if (parts[0] === "experiment" && parts[1] !== undefined) return experimentView(parts[1]);
  if (parts[0] === "trial" && parts[1] !== undefined) return trialView(parts[1]);
  if (parts[0] === "compare") return compareView(params.getAll("name"));
  return experimentsView();
}

let busy = false;

async function tick() {
  if (busy || !view) return;
  busy = true;
  const current = view;
  try {
    await current.render();
  } catch (error) {
    if (current === view) fill(main(), errorBox(error));
  } finally {
    busy = false;
    const live = document.getElementById("live");
    const stale = Date.now() - lastOk > 5 * POLL_MS;
    live.textContent = stale ? "not updating: the dashboard is unreachable" : `live · ${new Date(lastOk).toLocaleTimeString()}`;
    live.classList.toggle("stale", stale);
  }
}

window.addEventListener("hashchange", () => { view = route(); main().replaceChildren(); tick(); });
window.addEventListener("DOMContentLoaded", () => {
  view = route();
  tick();
  setInterval(tick, POLL_MS);
});
