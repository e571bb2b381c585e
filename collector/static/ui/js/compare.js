// Runs compared: their curves overlaid per key, the params and latest metrics that
// differ, and a param-vs-metric scatter for sweeps.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { getJSON, postJSON } from "./api.js";
import { h, fill, crumbs, debounce, statusBadge } from "./dom.js";
import { num } from "./format.js";
import { LazyCharts, PALETTE, settingsBar, settingsFromQuery, settingsToQuery } from "./charts.js";
import { setQuery } from "./main.js";
import { chartGroups, chartSections, systemGroups } from "./groups.js";

function differs(values) {
  const seen = new Set(values.map((v) => (v === undefined ? "\u0000missing" : String(v))));
  return seen.size > 1;
}

// Runs shown as columns of the differences table (the charts take every run).
const DIFF_COLUMNS = 50;
const LIVE_MS = 2000;
const MAX_RUNS = 1000;
// Runs per run-states call (the collector's MAX_STATE_RUNS).
const MAX_STATE_RUNS = 1000;

async function loadRuns(query) {
  const ids = (query.get("runs") || "").split(",").filter(Boolean);
  if (ids.length) {
    const found = await Promise.all(ids.map((id) => getJSON(`/runs/${encodeURIComponent(id)}`)));
    return { runs: found.map((f) => f.run), exp: found[0].experiment };
  }
  // ?experiment=ID[&filter=F]: every run of the experiment that the filter matches.
  const eid = query.get("experiment");
  if (!eid) throw new Error("No runs to compare: select runs in an experiment's table.");
  const [{ experiment }, page] = await Promise.all([
    getJSON(`/experiments/${encodeURIComponent(eid)}`),
    getJSON(`/experiments/${encodeURIComponent(eid)}/runs`, { filter: query.get("filter"), max_results: MAX_RUNS }),
  ]);
  if (!page.runs.length) throw new Error("No run matches the filter.");
  return { runs: page.runs, exp: experiment };
}

/** Render the compare page for ?runs=a,b,c (or ?experiment=ID&filter=F) into root. */
export async function comparePage(root, query) {
  const { runs, exp } = await loadRuns(query);
  const shown = runs.slice(0, DIFF_COLUMNS);
  crumbs([
    ["Experiments", "#/"],
    [exp.name, `#/experiments/${encodeURIComponent(exp.experiment_id)}`],
    [`Compare ${runs.length} runs`, null],
  ]);
  const color = (i) => PALETTE[i % PALETTE.length];
  const label = (r) => r.info.run_name || r.info.run_id.slice(0, 8);
  // Each legend entry's status, updated live.
  const badges = new Map(shown.map((r) => [r.info.run_id, h("span", { class: "run-status" }, statusBadge(r.info.status))]));

  // -- what differs -----------------------------------------------------------------------
  const showAll = h("input", { type: "checkbox" });
  const diffBody = h("tbody");
  const diffRows = () => {
    const rows = [];
    for (const [kind, field, fmt] of [["param", "params", String], ["metric", "metrics", num]]) {
      const keys = [...new Set(shown.flatMap((r) => Object.keys(r.data[field])))].sort();
      for (const k of keys) {
        if (kind === "metric" && k.startsWith("system/")) continue;
        const vals = shown.map((r) => r.data[field][k]);
        if (!showAll.checked && !differs(vals)) continue;
        rows.push(h("tr", { class: kind }, h("th", {}, h("span", { class: "muted" }, `${kind} `), k),
          vals.map((v) => h("td", {}, v === undefined ? "" : fmt(v)))));
      }
    }
    fill(diffBody, rows.length ? rows : h("tr", {}, h("td", { colspan: shown.length + 1, class: "muted" }, "No differences.")));
  };
  showAll.addEventListener("change", diffRows);
  diffRows();

  // The page's state lives in its address beside the runs it compares (?runs= or
  // ?experiment=&filter=): x=, log=, smooth= (as on a run's page), group= (params.K or
  // tags.K), keys= (the key search), sx= and sy= (the scatter's param and metric).
  const state = new URLSearchParams(query);
  const save = (name, value) => {
    if (name) value ? state.set(name, value) : state.delete(name);
    setQuery(state);
  };

  // -- curves -------------------------------------------------------------------------------
  const settings = settingsFromQuery(query);
  settings.listeners.add(() => save(null, settingsToQuery(settings, state)));
  const charts = new LazyCharts(settings);
  const keyRuns = new Map();
  runs.forEach((r, i) => {
    for (const key of Object.keys(r.data.metrics)) {
      if (!keyRuns.has(key)) keyRuns.set(key, []);
      keyRuns.get(key).push(i);
    }
  });
  const keys = [...keyRuns.keys()].sort();
  const slot = (k) =>
    charts.slot({
      title: k,
      key: k,
      timeAxis: k.startsWith("system/"),
      lines: keyRuns.get(k).map((i) => ({
        runId: runs[i].info.run_id,
        key: k,
        label: label(runs[i]),
        color: color(i),
        start: runs[i].info.start_time,
      })),
    });
  // The keys to chart: a search over the keys, and collapsible sections by prefix
  // (system/ split by node and GPU); closed sections and charts off screen fetch nothing.
  const keySearch = h("input", {
    type: "search", class: "search", placeholder: "Search metric keys", "aria-label": "Search metric keys",
    value: query.get("keys") || "",
  });
  const slots = h("div", { class: "chart-groups" });
  const closed = new Set();
  const renderCharts = () => {
    const q = keySearch.value.trim().toLowerCase();
    const shownKeys = keys.filter((k) => !q || k.toLowerCase().includes(q));
    const system = shownKeys.filter((k) => k.startsWith("system/"));
    const user = (ks) => ks.filter((k) => !k.startsWith("system/"));
    const groups = chartGroups(user(shownKeys), user(keys).length);
    if (system.length) groups.push({ id: "system", title: "system", children: systemGroups(system) });
    charts.clear();
    fill(
      slots,
      groups.length
        ? chartSections(groups, { slot, closed, searching: !!q, wide: true })
        : h("p", { class: "muted" }, q ? "No metric key matches." : "No metrics logged."),
    );
  };
  keySearch.addEventListener("input", debounce(() => {
    save("keys", keySearch.value.trim());
    renderCharts();
  }, 150));
  const grouping = groupPicker(runs, settings, query.get("group"), (v) => save("group", v));
  renderCharts();

  fill(
    root,
    h("h1", {}, `Comparing ${runs.length} runs`),
    h("ul", { class: "legend-runs" }, shown.map((r, i) =>
      h("li", { dataset: { runId: r.info.run_id } }, h("span", { class: "swatch", style: `background:${color(i)}` }), h("a", {
        href: `#/experiments/${encodeURIComponent(r.info.experiment_id)}/runs/${r.info.run_id}`,
      }, label(r)), " ", badges.get(r.info.run_id)))),
    h(
      "section",
      {},
      h("h2", {}, "Differences ", h("label", { class: "muted small" }, showAll, " show all")),
      h("div", { class: "table-scroll" }, h("table", { class: "grid diff" },
        h("thead", {}, h("tr", {}, h("th", {}, "key"), shown.map((r, i) => h("th", { style: `color:${color(i)}` }, label(r))))),
        diffBody)),
      runs.length > shown.length ? h("p", { class: "muted" }, `The first ${shown.length} of ${runs.length} runs.`) : null,
    ),
    h("section", {}, h("h2", {}, "Parameter vs. metric"), scatter(runs, query.get("sx"), query.get("sy"), save)),
    h("section", {}, h("h2", {}, "Metrics"), h("div", { class: "toolbar" }, keySearch, settingsBar(settings), grouping), slots),
  );
  // Live: while any compared run is RUNNING, one run-states call (per MAX_STATE_RUNS
  // runs) reports which still are, and the charts on screen fetch those runs' new points,
  // each after its own last step: a tick costs the same few requests for 3 runs or 1,000.
  // Runs that finished are polled no more (once more for the points logged just before).
  let timer = 0;
  let stopped = false;
  const running = new Set(runs.filter((r) => r.info.status === "RUNNING").map((r) => r.info.run_id));
  const tick = async () => {
    try {
      const ids = [...running];
      const calls = [];
      for (let i = 0; i < ids.length; i += MAX_STATE_RUNS) calls.push(postJSON("/run-states", { run: ids.slice(i, i + MAX_STATE_RUNS) }));
      const polled = new Set(running);
      for (const { runs: states, missing } of await Promise.all(calls)) {
        for (const st of states) {
          if (st.status === "RUNNING") continue;
          running.delete(st.run_id);
          const badge = badges.get(st.run_id);
          if (badge) fill(badge, statusBadge(st.status));
        }
        for (const id of missing) running.delete(id); // deleted for good: nothing to follow
      }
      await charts.poll(polled);
    } catch {
      // retried at the next tick
    }
    if (!stopped && running.size) timer = setTimeout(tick, LIVE_MS);
  };
  if (running.size) timer = setTimeout(tick, LIVE_MS);
  return {
    destroy() {
      stopped = true;
      clearTimeout(timer);
      charts.clear();
    },
  };
}

/** "Group by" a param or tag ("params.K", "tags.K"; initial: the address's, when the
 * runs have it): each group drawn as its mean with a min-max band; ``onPick`` hears each
 * choice ("" for none). */
function groupPicker(runs, settings, initial, onPick) {
  const byId = new Map(runs.map((r) => [r.info.run_id, r]));
  const keys = (field) => [...new Set(runs.flatMap((r) => Object.keys(r.data[field])))]
    .filter((k) => !k.startsWith("mlflow."))
    .sort();
  const groupOf = (v) => {
    const [field, ...rest] = v.split(".");
    const key = rest.join(".");
    return v ? (line) => byId.get(line.runId)?.data[field][key] : null;
  };
  const options = [
    ...keys("params").map((k) => [`params.${k}`, `param ${k}`]),
    ...keys("tags").map((k) => [`tags.${k}`, `tag ${k}`]),
  ];
  const start = options.some(([v]) => v === initial) ? initial : "";
  // Set before the first charts are drawn, without a redraw of charts not yet there.
  settings.groupOf = start ? groupOf(start) : null;
  const select = h(
    "select",
    {
      "aria-label": "group by",
      onchange: (e) => {
        onPick(e.target.value);
        settings.set("groupOf", groupOf(e.target.value));
      },
    },
    h("option", { value: "" }, "no grouping"),
    options.map(([v, label]) => h("option", { value: v, selected: v === start }, label)),
  );
  return h("label", {}, "group by ", select);
}

/** A scatter of one param (x) against one metric's latest value (y), a point per run;
 * ``sx``, ``sy``: the address's choices (kept when the runs have them); ``save``
 * (name, value) keeps each new choice there. */
function scatter(runs, sx, sy, save) {
  const params = [...new Set(runs.flatMap((r) => Object.keys(r.data.params)))].sort();
  const metrics = [...new Set(runs.flatMap((r) => Object.keys(r.data.metrics)))].filter((k) => !k.startsWith("system/")).sort();
  if (!params.length || !metrics.length) return h("p", { class: "muted" }, "Needs at least one param and one metric.");
  // Start with a param and a metric that most runs have together (a sweep's knob and
  // score), preferring ones that differ between the runs: a metric only one run logged
  // would leave the scatter empty.
  const varying = (field) => (k) => differs(runs.map((r) => r.data[field][k]));
  const having = (field, k, among = runs) => among.filter((r) => r.data[field][k] !== undefined);
  const best = (keys, score) => keys.reduce((a, k) => (score(k) > score(a) ? k : a), keys[0]);
  const x0 = params.includes(sx) ? sx
    : best(params, (k) => having("params", k).length * 2 + (varying("params")(k) ? 1 : 0));
  const withX = having("params", x0);
  const y0 = metrics.includes(sy) ? sy
    : best(metrics, (m) => having("metrics", m, withX).length * 2 + (varying("metrics")(m) ? 1 : 0));
  const px = h("select", { "aria-label": "param" }, params.map((p) => h("option", { value: p, selected: p === x0 }, p)));
  const my = h("select", { "aria-label": "metric" }, metrics.map((m) => h("option", { value: m, selected: m === y0 }, m)));
  const box = h("div", { class: "scatter" });
  let plot = null;
  const draw = () => {
    const p = px.value;
    const m = my.value;
    const raw = runs.map((r) => r.data.params[p]);
    const numeric = raw.every((v) => v === undefined || !Number.isNaN(Number(v)));
    const cats = numeric ? [] : [...new Set(raw.filter((v) => v !== undefined))].sort();
    const pts = runs
      .map((r, i) => [numeric ? Number(raw[i]) : cats.indexOf(raw[i]), r.data.metrics[m]])
      .filter(([x, y]) => x !== -1 && Number.isFinite(x) && Number.isFinite(y))
      .sort((a, b) => a[0] - b[0]);
    if (plot) plot.destroy();
    plot = new uPlot(
      {
        width: Math.max(300, Math.min(700, box.clientWidth || 600)),
        height: 260,
        scales: { x: { time: false } },
        series: [
          { label: p, value: (u, v) => (v == null ? "" : numeric ? num(v) : cats[v]) },
          { label: m, stroke: PALETTE[0], paths: () => null, points: { show: true, size: 8, fill: PALETTE[0] } },
        ],
        axes: [
          numeric ? {} : { values: (u, vals) => vals.map((v) => cats[v] ?? "") },
          { size: 84, values: (u, vals) => vals.map(num) },
        ],
        cursor: { drag: { x: false, y: false } },
      },
      [pts.map((q) => q[0]), pts.map((q) => q[1])],
      box,
    );
  };
  px.addEventListener("change", () => {
    save("sx", px.value);
    draw();
  });
  my.addEventListener("change", () => {
    save("sy", my.value);
    draw();
  });
  requestAnimationFrame(draw);
  return h("div", {}, h("div", { class: "toolbar" }, h("label", {}, "x: ", px), h("label", {}, "y: ", my)), box);
}
