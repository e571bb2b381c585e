// Metric charts on uPlot (canvas). Each line is read at about 4 points per pixel column
// of the chart, every bucket keeping its min, max and last point, so a one-point spike
// shows at any zoom; a drag selects a range that is fetched again at full resolution
// (down to raw points once they fit); a double click goes back to the whole series.
// Lines of RUNNING runs grow by fetching only the points after their last step.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { getJSON, postJSON } from "./api.js";
import { h, fill } from "./dom.js";
import { num, duration, decimalsFor } from "./format.js";

export const PALETTE = [
  "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];
const SYNC_KEY = "flightlog";
// Point budget per pixel column for one chart, shared by its lines once there are many.
const POINTS_PER_PIXEL = 4;
const CHART_BUDGET_PER_PIXEL = 40;
// Runs per metrics call: 1,000 runs on a chart are one POST (the collector's work is
// CPU-bound under one GIL, so parallel calls would only finish together, later).
const RUNS_PER_CALL = 1000;
const GET_RUNS = 100;
// Chart slots this close to the viewport are mounted (and fetched).
const MOUNT_MARGIN_PX = 300;

/** Chart settings shared by every chart of a page; listeners redraw on change. */
export class ChartSettings {
  constructor(init = {}) {
    this.xMode = init.xMode || "step"; // "step" | "wall" | "relative"
    this.logY = !!init.logY;
    this.smoothing = Number(init.smoothing || 0); // EMA weight in [0, 0.99]
    // Compare: null, or line -> group label; each group drawn as its mean with a
    // min-max band.
    this.groupOf = null;
    this.listeners = new Set();
  }
  set(key, value) {
    this[key] = value;
    for (const fn of this.listeners) fn(key);
  }
}

/** A page's ChartSettings read from its address (?x=wall&log=1&smooth=0.9). */
export function settingsFromQuery(query) {
  return new ChartSettings({
    xMode: query.get("x"),
    logY: query.get("log") === "1",
    smoothing: query.get("smooth"),
  });
}

/** Write settings into query (defaults left out), so a reload or a shared link keeps them. */
export function settingsToQuery(settings, query) {
  const put = (name, on, value) => (on ? query.set(name, value) : query.delete(name));
  put("x", settings.xMode !== "step", settings.xMode);
  put("log", settings.logY, "1");
  put("smooth", !!settings.smoothing, String(settings.smoothing));
  return query;
}

/** The controls for a ChartSettings: x axis, log scale, smoothing. */
export function settingsBar(settings) {
  const x = h(
    "select",
    { "aria-label": "x axis", onchange: (e) => settings.set("xMode", e.target.value) },
    [["step", "Step"], ["wall", "Wall time"], ["relative", "Relative time"]].map(([v, label]) =>
      h("option", { value: v, selected: settings.xMode === v }, label),
    ),
  );
  const log = h("input", {
    type: "checkbox",
    checked: settings.logY,
    onchange: (e) => settings.set("logY", e.target.checked),
  });
  const smooth = h("input", {
    type: "range",
    min: 0,
    max: 0.99,
    step: 0.01,
    value: String(settings.smoothing),
    "aria-label": "smoothing",
    oninput: (e) => settings.set("smoothing", Number(e.target.value)),
  });
  return h(
    "div",
    { class: "chart-settings" },
    h("label", {}, "x: ", x),
    h("label", {}, log, " log y"),
    h("label", {}, "smoothing ", smooth),
  );
}

/** Exponential moving average with TensorBoard's debiasing; gaps stay gaps. */
export function smooth(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let last = 0;
  let norm = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) {
      out[i] = v;
      continue;
    }
    last = last * weight + (1 - weight) * v;
    norm = norm * weight + (1 - weight);
    out[i] = last / norm;
  }
  return out;
}

/**
 * Decode a series' values in place: the collector sends +/-infinity as the strings
 * "Infinity" and "-Infinity" (JSON has no such numbers) and NaN as null.
 */
export function decodeValues(values) {
  for (let i = 0; i < values.length; i++) {
    if (typeof values[i] === "string") values[i] = Number(values[i]);
  }
  return values;
}

/** Mark a fetched series that holds an infinity (its chart table maps them to gaps). */
function withInfinite(s) {
  s.infinite = s.values.some((v) => v === Infinity || v === -Infinity);
  return s;
}

/**
 * Fetch series for lines [{runId, key}] over a step range; returns them in order. One
 * call per key and RUNS_PER_CALL runs, a POST past GET_RUNS (run ids no longer fit in a
 * URL): the collector reads every run's chunks in one query and buckets them in one pass.
 * ``range.after`` (live): an array, each line's last step held (null: none yet); each
 * line gets only its points after it.
 */
export async function fetchSeries(lines, points, range = {}) {
  const byKey = new Map();
  lines.forEach((l, i) => {
    if (!byKey.has(l.key)) byKey.set(l.key, { runs: [], after: [] });
    const k = byKey.get(l.key);
    k.runs.push(l.runId);
    k.after.push(range.after ? range.after[i] ?? "" : "");
  });
  const calls = [];
  for (const [key, { runs, after }] of byKey) {
    for (let i = 0; i < runs.length; i += RUNS_PER_CALL) {
      const args = { run: runs.slice(i, i + RUNS_PER_CALL), key: [key], points };
      if (range.min != null) args.min_step = range.min;
      if (range.max != null) args.max_step = range.max;
      if (range.after) args.after_step = after.slice(i, i + RUNS_PER_CALL);
      // A GET while the run ids fit in a URL (readable in logs and dev tools).
      calls.push(args.run.length <= GET_RUNS ? getJSON("/metrics", args) : postJSON("/metrics", args));
    }
  }
  const found = new Map();
  for (const { series } of await Promise.all(calls)) {
    for (const s of series) {
      decodeValues(s.values);
      found.set(`${s.run_id}\u0000${s.key}`, s);
    }
  }
  return lines.map((l) => found.get(`${l.runId}\u0000${l.key}`));
}

/**
 * One chart: lines [{runId, key, label, color, start}] (start: the run's start, epoch ms,
 * for relative time). ``timeAxis``: always plot against time (system metrics), using
 * relative time when the page's x is "step". ``span``: () => [start, end] epoch ms, the
 * time every chart of the page shows on a time axis (widened to the chart's own data),
 * so a run's training and system charts line up.
 */
export class MetricChart {
  constructor(el, { title, lines, settings, height = 190, timeAxis = false, span = null }) {
    this.el = el;
    this.lines = lines;
    this.settings = settings;
    this.height = height;
    this.timeAxis = timeAxis;
    this.span = span;
    this.data = lines.map(() => ({ steps: [], values: [], timestamps: [] }));
    this.range = null; // {min, max} steps while zoomed
    this.plot = null;
    this.title = h("div", { class: "chart-title", title }, title);
    this.status = h("span", { class: "chart-status muted" });
    this.box = h("div", { class: "chart-plot" });
    fill(el, h("div", { class: "chart-head" }, this.title, this.status), this.box);
    el.classList.add("chart");
    el.dataset.key = lines.length === 1 ? lines[0].key : title;
    this.title.title = el.dataset.key;
    this.onSettings = () => this.draw();
    settings.listeners.add(this.onSettings);
    this.resize = new ResizeObserver(() => {
      if (this.plot && this.width() !== this.plot.width) this.plot.setSize({ width: this.width(), height: this.height });
    });
    this.resize.observe(el);
  }

  width() {
    return Math.max(200, Math.floor(this.el.clientWidth || 400) - 2);
  }

  pointsPerLine() {
    const w = this.width();
    const shared = Math.floor((CHART_BUDGET_PER_PIXEL * w) / this.lines.length);
    return Math.max(150, Math.min(POINTS_PER_PIXEL * w, shared));
  }

  /** Fetch the visible range (or everything) and draw. */
  async load() {
    this.status.textContent = "loading…";
    this.el.dataset.state = "loading";
    const series = await fetchSeries(this.lines, this.pointsPerLine(), this.range || {});
    this.data = series.map((s) => withInfinite(s || { steps: [], values: [], timestamps: [], sampled: false }));
    this.draw();
  }

  /**
   * Live: fetch the new points of the lines whose run is in ``live`` (every line when
   * null), each after its own last step, and append them. One call for the whole chart
   * (per RUNS_PER_CALL runs), whatever the steps: a chart of 1,000 RUNNING runs must not
   * send 1,000 requests every tick, and finished runs' lines send nothing.
   */
  poll(live = null) {
    // One poll at a time: two at once would both append the points after the same step.
    if (!this.polling) this.polling = this.pollOnce(live).finally(() => { this.polling = null; });
    return this.polling;
  }

  async pollOnce(live) {
    if (this.range) return; // zoomed in: the user is reading; pick up new points later
    const budget = this.pointsPerLine();
    if (this.data.some((d) => d.steps.length > 3 * budget)) return this.load(); // re-bucket
    const idx = [];
    this.lines.forEach((l, i) => { if (!live || live.has(l.runId)) idx.push(i); });
    if (!idx.length) return;
    const after = idx.map((i) => {
      const steps = this.data[i].steps;
      return steps.length ? steps[steps.length - 1] : null;
    });
    const got = await fetchSeries(idx.map((i) => this.lines[i]), budget, { after });
    const fresh = new Array(this.lines.length);
    idx.forEach((i, j) => { fresh[i] = got[j]; });
    let grew = false;
    fresh.forEach((s, i) => {
      if (!s || !s.steps.length) return;
      const d = this.data[i];
      d.steps = d.steps.concat(s.steps);
      d.values = d.values.concat(s.values);
      d.timestamps = d.timestamps.concat(s.timestamps);
      d.infinite = d.infinite || withInfinite(s).infinite;
      grew = true;
    });
    if (grew) this.draw();
  }

  xMode() {
    const m = this.settings.xMode;
    return this.timeAxis && m === "step" ? "relative" : m;
  }

  xValues(d, line) {
    const m = this.xMode();
    if (m === "step") return d.steps;
    if (m === "wall") return d.timestamps;
    const t0 = (line.start ?? 0) / 1000;
    return d.timestamps.map((t) => t - t0);
  }

  table() {
    const logY = this.settings.logY;
    // Infinities cannot be placed on a scale, nor zero or below on a log scale: drawn
    // as gaps (an infinity is shown in the legend).
    const drawable = (d, v) => {
      if (logY) return v.map((x) => (x != null && x > 0 && x !== Infinity ? x : null));
      return d.infinite ? v.map((x) => (Number.isFinite(x) ? x : null)) : v;
    };
    const ys = this.data.map((d) => drawable(d, smooth(d.values, this.settings.smoothing)));
    if (this.withRaw()) {
      // Smoothed lines over their raw points, drawn faint (as TensorBoard and W&B do).
      const raw = this.data.map((d) => drawable(d, d.values));
      return uPlot.join(this.data.map((d, i) => [this.xValues(d, this.lines[i]), raw[i], ys[i]]));
    }
    if (this.lines.length === 1) return [this.xValues(this.data[0], this.lines[0]), ys[0]];
    const joined = uPlot.join(this.data.map((d, i) => [this.xValues(d, this.lines[i]), ys[i]]));
    return this.settings.groupOf ? this.grouped(joined) : joined;
  }

  /** Per group of lines: min, max and mean at every x (each line's last value carried
   * forward inside its own x range, since bucketed lines rarely share x values). */
  grouped(joined) {
    const xs = joined[0];
    const groups = new Map();
    this.lines.forEach((l, i) => {
      const g = this.settings.groupOf(l) ?? "(none)";
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(i + 1);
    });
    const filled = joined.map((ys, k) => {
      if (k === 0) return ys;
      const out = ys.slice();
      let last = null;
      let end = ys.length - 1;
      while (end >= 0 && ys[end] == null) end--;
      for (let j = 0; j <= end; j++) {
        if (out[j] == null) out[j] = last;
        else last = out[j];
      }
      return out;
    });
    this.groupLabels = [];
    const out = [xs];
    for (const [g, members] of groups) {
      const lo = new Array(xs.length);
      const hi = new Array(xs.length);
      const mean = new Array(xs.length);
      for (let j = 0; j < xs.length; j++) {
        let sum = 0;
        let n = 0;
        let mn = Infinity;
        let mx = -Infinity;
        for (const k of members) {
          const v = filled[k][j];
          if (v == null || !Number.isFinite(v)) continue;
          sum += v;
          n++;
          if (v < mn) mn = v;
          if (v > mx) mx = v;
        }
        lo[j] = n ? mn : null;
        hi[j] = n ? mx : null;
        mean[j] = n ? sum / n : null;
      }
      this.groupLabels.push(`${g} (${members.length})`);
      out.push(lo, hi, mean);
    }
    return out;
  }

  /** Whether raw lines are drawn under the smoothed ones (not for grouped runs). */
  withRaw() {
    return !!this.settings.smoothing && !(this.settings.groupOf && this.lines.length > 1);
  }

  lineSeries() {
    // A gap in a single line may be an infinity: the legend shows it from the data.
    const value = (u, v, si, idx) => {
      if (v != null) return num(v);
      const raw = this.lines.length === 1 && idx != null ? this.data[0].values[idx] : null;
      return raw === Infinity || raw === -Infinity ? num(raw) : "–";
    };
    if (this.withRaw()) {
      return this.lines.flatMap((l) => [
        { label: `${l.label} (raw)`, stroke: `${l.color}40`, width: 1, spanGaps: true, points: { show: false }, value },
        { label: l.label, stroke: l.color, width: 1.5, spanGaps: true, value },
      ]);
    }
    if (!this.settings.groupOf || this.lines.length === 1) {
      // Past a dozen lines, no point markers: 1,000 lines would otherwise draw a marker
      // at every sparse point (uPlot shows them when points are far apart).
      const points = { show: this.lines.length <= 12 };
      return this.lines.map((l) => ({ label: l.label, stroke: l.color, width: 1.25, spanGaps: true, points, value }));
    }
    return this.groupLabels.flatMap((label, i) => {
      const color = PALETTE[i % PALETTE.length];
      return [
        { label: `${label} min`, stroke: `${color}66`, width: 1, spanGaps: true, points: { show: false }, value },
        { label: `${label} max`, stroke: `${color}66`, width: 1, spanGaps: true, points: { show: false }, value },
        { label, stroke: color, width: 2, spanGaps: true, value },
      ];
    });
  }

  options() {
    const m = this.xMode();
    const grouped = !!this.settings.groupOf && this.lines.length > 1;
    const series = this.lineSeries();
    const xValue =
      m === "step" ? (u, v) => (v == null ? "" : `step ${v}`)
      : m === "wall" ? (u, v) => (v == null ? "" : new Date(v * 1000).toLocaleString())
      : (u, v) => (v == null ? "" : duration(v * 1000));
    return {
      width: this.width(),
      height: this.height,
      scales: { x: { time: m === "wall", range: this.xRange(m) }, y: { distr: this.settings.logY ? 3 : 1 } },
      series: [{ label: m, value: xValue }, ...series],
      // Group bands: between each group's max (2nd of its 3 series) and min (1st).
      bands: grouped
        ? this.groupLabels.map((_, i) => ({
            series: [2 + 3 * i, 1 + 3 * i],
            fill: `${PALETTE[i % PALETTE.length]}33`,
          }))
        : undefined,
      axes: [
        // Ticks as precise as their spacing, so 0.05 s apart never both read "0.1s".
        m === "relative" ? { values: (u, vals, _a, _s, incr) => vals.map((v) => duration(v * 1000, decimalsFor(incr))) } : {},
        // A log axis leaves minor ticks unlabelled (null), not "NaN".
        { size: 72, values: (u, vals) => vals.map((v) => (v == null ? "" : num(v))) },
      ],
      cursor: {
        sync: { key: SYNC_KEY, setSeries: false },
        drag: { x: true, y: false, setScale: false },
      },
      legend: { show: series.length <= 12, live: true },
      hooks: { setSelect: [(u) => this.onSelect(u)], draw: [(u) => this.drawn(u)] },
    };
  }

  /** What the axes show, on the element (data-x-min, data-x-ticks, data-y-ticks, ...)
   * for tools and tests that read the page; uPlot keeps each axis's tick labels in
   * ``_values`` (the vendored release is pinned). */
  drawn(u) {
    const d = this.el.dataset;
    d.xMin = String(u.scales.x.min);
    d.xMax = String(u.scales.x.max);
    d.yLog = String(u.scales.y.distr === 3);
    d.xTicks = (u.axes[0]._values || []).join("|");
    d.yTicks = (u.axes[1]._values || []).join("|");
  }

  /** The x range of a time axis over the page's span, or the data's own extent on a
   * page without one (compare); none while zoomed or by step. */
  xRange(m) {
    if (m === "step" || this.range) return undefined;
    return (u) => {
      let lo = Infinity;
      let hi = -Infinity;
      if (this.span) {
        const [a, b] = this.span();
        const t0 = m === "wall" ? 0 : this.lines[0].start ?? a;
        [lo, hi] = [(a - t0) / 1000, (b - t0) / 1000];
      }
      // Widened to the data's own extent, read from the data: uPlot's min and max are
      // padded for a single point (a time axis by a day, 86,400 s read as ms: years).
      for (const x of u.data[0] || []) {
        if (x == null) continue;
        if (x < lo) lo = x;
        if (x > hi) hi = x;
      }
      if (lo > hi) return [0, 1]; // nothing to show yet
      // A run that ended the moment it started still needs an axis of some width.
      if (!(hi - lo > 1e-3)) [lo, hi] = [lo - 0.5, hi + 0.5];
      return [lo, hi];
    };
  }

  draw() {
    const table = this.table();
    const total = this.data.reduce((s, d) => s + d.steps.length, 0);
    const sampled = this.data.some((d) => d.sampled);
    this.el.dataset.points = String(total);
    this.el.dataset.sampled = String(sampled);
    this.el.dataset.state = "drawn";
    const last = this.data.map((d) => (d.steps.length ? d.steps[d.steps.length - 1] : "")).join(",");
    this.el.dataset.lastStep = last;
    this.status.textContent = total ? (this.range ? `steps ${this.range.min}–${this.range.max} · ` : "") +
      (sampled ? "bucketed (min/max kept)" : `${total} points`) : "no points";
    if (this.plot) this.plot.destroy();
    this.plot = new uPlot(this.options(), table, this.box);
    this.plot.over.addEventListener("dblclick", () => {
      if (!this.range) return;
      this.range = null;
      this.load();
    });
  }

  async onSelect(u) {
    const { left, width } = u.select;
    if (width < 3) return;
    const x0 = u.posToVal(left, "x");
    const x1 = u.posToVal(left + width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    this.range = this.stepsBetween(x0, x1);
    await this.load();
  }

  /** The step range whose points lie between two x values (one point beyond each edge). */
  stepsBetween(x0, x1) {
    if (this.xMode() === "step") return { min: Math.floor(x0), max: Math.ceil(x1) };
    let min = Infinity;
    let max = -Infinity;
    this.data.forEach((d, i) => {
      const xs = this.xValues(d, this.lines[i]);
      for (let j = 0; j < xs.length; j++) {
        if (xs[j] >= x0 && xs[j] <= x1) {
          min = Math.min(min, d.steps[Math.max(0, j - 1)]);
          max = Math.max(max, d.steps[Math.min(xs.length - 1, j + 1)]);
        }
      }
    });
    return Number.isFinite(min) ? { min, max } : null;
  }

  destroy() {
    this.settings.listeners.delete(this.onSettings);
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

/** What makes two chart specs the same chart: its title, key and lines. */
function specId(spec) {
  return [spec.title, spec.timeAxis ? "t" : "s", ...spec.lines.map((l) => `${l.runId}\u0000${l.key}`)].join("\u0001");
}

/**
 * Small multiples that exist only on screen: each chart slot is a fixed-height
 * placeholder; a chart is created and fetched when its slot nears the viewport and
 * destroyed when it leaves, so a run with thousands of keys costs only what is visible.
 */
export class LazyCharts {
  constructor(settings) {
    this.settings = settings;
    this.mounted = new Map(); // slot -> MetricChart
    this.specs = new Map(); // slot -> spec
    this.observer = this.newObserver();
    this.kept = new Map(); // specId -> a chart's data, across clear(true)
  }

  newObserver() {
    return new IntersectionObserver((entries) => this.seen(entries), { rootMargin: `${MOUNT_MARGIN_PX}px` });
  }

  /** A placeholder for a chart made from spec {title, lines, timeAxis} when visible. */
  slot(spec) {
    const el = h(
      "div",
      { class: "chart-slot", dataset: { key: spec.key || spec.title } },
      h("div", { class: "chart-title" }, spec.title),
    );
    this.specs.set(el, spec);
    this.observer.observe(el);
    if (!this.checking) {
      // The observer reports only after the next frame; charts already on screen when
      // the page's code finishes start fetching now (a first paint one frame sooner,
      // which under load is tens of milliseconds).
      this.checking = true;
      queueMicrotask(() => {
        this.checking = false;
        this.mountOnScreen();
      });
    }
    return el;
  }

  /** Mount the slots that are in the page and within the observer's margin now. */
  mountOnScreen() {
    const bottom = window.innerHeight + MOUNT_MARGIN_PX;
    for (const el of this.specs.keys()) {
      if (!el.isConnected || this.mounted.has(el)) continue;
      const r = el.getBoundingClientRect();
      if (r.bottom >= -MOUNT_MARGIN_PX && r.top <= bottom && r.width > 0) this.mount(el);
    }
  }

  mount(el) {
    const spec = this.specs.get(el);
    const c = new MetricChart(el, { ...spec, settings: this.settings });
    c.specId = specId(spec);
    this.mounted.set(el, c);
    const held = this.kept.get(c.specId);
    this.kept.delete(c.specId);
    if (held) {
      // The same chart before the page rebuilt its slots (a live run logged a new key):
      // draw what was held and fetch only the points after it, not the whole series.
      c.data = held;
      c.draw();
      c.poll().catch(() => {});
      return;
    }
    c.load().catch((err) => {
      c.status.textContent = err.message;
    });
  }

  seen(entries) {
    for (const e of entries) {
      const chart = this.mounted.get(e.target);
      if (e.isIntersecting && !chart) {
        this.mount(e.target);
      } else if (!e.isIntersecting && chart) {
        chart.destroy();
        this.mounted.delete(e.target);
        const spec = this.specs.get(e.target);
        e.target.classList.remove("chart");
        fill(e.target, h("div", { class: "chart-title" }, spec.title));
      }
    }
  }

  /** Live updates for every chart on screen (of the runs in ``live``; all when null). */
  async poll(live = null) {
    await Promise.all([...this.mounted.values()].map((c) => c.poll(live).catch(() => {})));
  }

  /**
   * Remove every slot. With ``keep``, the data of charts drawn and not zoomed is held for
   * slots of the same spec made next (see mount).
   */
  clear(keep = false) {
    this.kept = new Map();
    for (const c of this.mounted.values()) {
      if (keep && !c.range && c.el.dataset.state === "drawn") this.kept.set(c.specId, c.data);
      c.destroy();
    }
    this.mounted.clear();
    this.specs.clear();
    this.observer.disconnect();
    this.observer = this.newObserver();
  }
}
