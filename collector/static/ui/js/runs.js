// An experiment's runs: a virtualised table (only the rows on screen exist in the DOM,
// so 10,000 runs scroll smoothly), chosen columns, the search filter language, sort by
// any column, nested runs under their parent, deleted runs on request, and a selection
// to compare. State lives in the address: ?filter=&cols=&sort=&deleted=1.
import { getJSON, ApiError } from "./api.js";
import { h, fill, crumbs, statusBadge, debounce } from "./dom.js";
import { dateTime, runDuration, num } from "./format.js";
import { setQuery } from "./main.js";
import { FLAT_KEYS, groupByPrefix, shortName } from "./groups.js";

const ROW = 28;
// A small first page paints the table at once; larger ones follow for the rest.
const FIRST_PAGE = 200;
const PAGE = 5000;

function baseColumns() {
  return [
    { id: "name", label: "Run", width: 260, get: (r) => r.info.run_name },
    { id: "status", label: "Status", width: 96, get: (r) => r.info.status, cell: (r) => statusBadge(r.info.status) },
    { id: "start", label: "Started", width: 165, get: (r) => r.info.start_time, text: (r) => dateTime(r.info.start_time) },
    {
      id: "duration", label: "Duration", width: 90,
      get: (r) => (r.info.start_time ? (r.info.end_time ?? Date.now()) - r.info.start_time : null),
      text: (r) => runDuration(r.info),
    },
    { id: "user", label: "User", width: 100, get: (r) => r.info.user_id },
    { id: "source", label: "Source", width: 140, get: (r) => r.data.tags["mlflow.source.name"] },
  ];
}

/** A params./metrics./tags. column; metric cells show metricValue(run, key) (and the
 * step a value at a chosen step came from, when it is an earlier one). */
function keyColumn(id, state, metricValue, metricStep) {
  const dot = id.indexOf(".");
  const kind = id.slice(0, dot);
  const key = id.slice(dot + 1);
  const field = { metrics: "metrics", params: "params", tags: "tags" }[kind];
  if (!field) return null;
  const get = kind === "metrics" ? (r) => metricValue(r, key) : (r) => r.data[field][key];
  const { agg, step } = state;
  const aggLabel = agg === "step" ? `@${step ?? "?"}` : agg;
  return {
    id,
    label: kind === "metrics" && agg !== "last" ? `${key} (${aggLabel})` : key,
    kind,
    width: agg === "step" && kind === "metrics" ? 130 : 110,
    get,
    text: (r) => {
      const v = get(r);
      if (v === undefined) return "";
      if (kind !== "metrics") return v;
      const from = metricStep(r, key);
      return from !== undefined && from !== step ? `${num(v)} (@${from})` : num(v);
    },
  };
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === undefined || a === null || a === "") return 1; // empty last, either way
  if (b === undefined || b === null || b === "") return -1;
  const na = typeof a === "number" ? a : Number(a);
  const nb = typeof b === "number" ? b : Number(b);
  if (!Number.isNaN(na) && !Number.isNaN(nb) && a !== "" && b !== "") return na - nb;
  return String(a).localeCompare(String(b));
}

/** Runs as a tree: children right under their parent (when the parent is listed). */
export function flatten(runs, sortFn, collapsed) {
  const ids = new Set(runs.map((r) => r.info.run_id));
  const kids = new Map();
  const roots = [];
  for (const r of runs) {
    const p = r.data.tags["mlflow.parentRunId"];
    if (p && p !== r.info.run_id && ids.has(p)) {
      if (!kids.has(p)) kids.set(p, []);
      kids.get(p).push(r);
    } else roots.push(r);
  }
  const out = [];
  const seen = new Set();
  // Collapsed subtrees are walked too (not shown), so every run is reached exactly once.
  const walk = (list, depth, visible) => {
    for (const r of sortFn ? [...list].sort(sortFn) : list) {
      const id = r.info.run_id;
      if (seen.has(id)) continue;
      seen.add(id);
      const c = kids.get(id);
      if (visible) out.push({ run: r, depth, children: c ? c.length : 0 });
      if (c) walk(c, depth + 1, visible && !collapsed.has(id));
    }
  };
  walk(roots, 0, true);
  // A parent cycle leaves runs unreached from any root: list them rather than lose them.
  walk(runs.filter((r) => !seen.has(r.info.run_id)), 0, true);
  return out;
}

/** Render an experiment's runs into root. */
export async function runsPage(root, experimentId, query) {
  const eid = encodeURIComponent(experimentId);
  const { experiment } = await getJSON(`/experiments/${eid}`);
  crumbs([["Experiments", "#/"], [experiment.name, null]]);

  const state = {
    filter: query.get("filter") || "",
    cols: query.has("cols") ? query.get("cols").split(",").filter(Boolean) : null,
    sort: query.get("sort") || "",
    deleted: query.get("deleted") === "1",
    // metric cells: last, min, max, or the value at a chosen step
    agg: ["min", "max", "step"].includes(query.get("agg")) ? query.get("agg") : "last",
    step: /^-?\d+$/.test(query.get("step") || "") ? Number(query.get("step")) : null,
  };
  // Metric cells: the latest value comes with each run; min and max (metric-extremes)
  // and values at a step (metric-at-step) are read per key on demand, for the metric
  // columns shown, and kept: {key or key@step -> {run_id -> [min, max] or [step, value]}}.
  const perKey = new Map();
  const cacheKey = (key) => (state.agg === "step" ? `${key}@${state.step}` : key);
  const found = (r, key) => perKey.get(cacheKey(key))?.[r.info.run_id];
  const metricValue = (r, key) => {
    if (state.agg === "last") return r.data.metrics[key];
    const v = found(r, key);
    return v ? v[state.agg === "min" ? 0 : 1] : undefined;
  };
  // The step an at-step value was logged at (it may be before the chosen step).
  const metricStep = (r, key) => (state.agg === "step" ? found(r, key)?.[0] : undefined);
  const loadExtremes = async () => {
    if (state.agg === "last" || (state.agg === "step" && state.step === null)) return;
    const keys = (state.cols || []).filter((c) => c.startsWith("metrics.")).map((c) => c.slice(8));
    const missing = keys.filter((k) => !perKey.has(cacheKey(k)));
    const step = state.step;
    const got = await Promise.all(
      missing.map((key) =>
        state.agg === "step"
          ? getJSON(`/experiments/${eid}/metric-at-step`, { key, step })
          : getJSON(`/experiments/${eid}/metric-extremes`, { key }),
      ),
    );
    got.forEach((g) => perKey.set(g.step === undefined ? g.key : `${g.key}@${g.step}`, g.values ?? g.extremes));
  };
  // Without chosen columns: the first 5 metrics and params of the first page of runs.
  const defaultColumns = (page) => {
    const keys = (field) => [...new Set(page.flatMap((r) => Object.keys(r.data[field])))].sort().slice(0, 5);
    return [...keys("metrics").map((k) => `metrics.${k}`), ...keys("params").map((k) => `params.${k}`)];
  };
  let runs = [];
  let rows = [];
  const selected = new Set();
  const collapsed = new Set();
  let loading = null;

  const saveState = () => {
    const q = new URLSearchParams();
    if (state.filter) q.set("filter", state.filter);
    if (state.cols) q.set("cols", state.cols.join(","));
    if (state.sort) q.set("sort", state.sort);
    if (state.deleted) q.set("deleted", "1");
    if (state.agg !== "last") q.set("agg", state.agg);
    if (state.agg === "step" && state.step !== null) q.set("step", String(state.step));
    setQuery(q);
  };

  // -- toolbar ------------------------------------------------------------------------
  const filterInput = h("input", {
    type: "search",
    class: "filter",
    placeholder: "metrics.accuracy > 0.9 AND (params.model = 'cnn' OR tags.team = 'ml')",
    "aria-label": "Filter runs",
    value: state.filter,
    spellcheck: false,
  });
  const filterError = h("pre", { class: "filter-error", role: "alert", hidden: true });
  const deleted = h("input", { type: "checkbox", checked: state.deleted });
  const count = h("span", { class: "muted count" });
  const compareBtn = h("button", { type: "button", disabled: true }, "Compare");
  const relayout = async () => {
    saveState();
    await loadExtremes();
    layout();
  };
  const picker = columnPicker(eid, state, relayout);
  const agg = h(
    "select",
    {
      "aria-label": "metric cells",
      onchange: (e) => {
        state.agg = e.target.value;
        stepInput.hidden = state.agg !== "step";
        if (!stepInput.hidden) stepInput.focus();
        relayout();
      },
    },
    [["last", "last"], ["min", "min"], ["max", "max"], ["step", "at step"]].map(([a, label]) =>
      h("option", { value: a, selected: state.agg === a }, label),
    ),
  );
  // The step for "at step" cells; each run shows its value at that step, or at the
  // last step it logged before it (marked "(@step)").
  const stepInput = h("input", {
    type: "number",
    class: "step",
    step: 1,
    placeholder: "step",
    "aria-label": "metric step",
    hidden: state.agg !== "step",
    value: state.step === null ? "" : String(state.step),
  });
  const applyStep = () => {
    const v = stepInput.value.trim();
    const step = /^-?\d+$/.test(v) ? Number(v) : null;
    if (step === state.step) return;
    state.step = step;
    relayout();
  };
  stepInput.addEventListener("input", debounce(applyStep, 400));
  stepInput.addEventListener("change", applyStep);
  filterInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      state.filter = filterInput.value.trim();
      saveState();
      load();
    }
  });
  deleted.addEventListener("change", () => {
    state.deleted = deleted.checked;
    saveState();
    load();
  });
  compareBtn.addEventListener("click", () => {
    location.hash = `#/compare-runs?runs=${[...selected].join(",")}`;
  });
  // Every run the filter matches (up to 1,000), overlaid.
  const compareAll = h("button", {
    type: "button",
    title: "Compare every run the filter matches (up to 1,000)",
    onclick: () => {
      const q = new URLSearchParams({ experiment: experimentId });
      if (state.filter) q.set("filter", state.filter);
      location.hash = `#/compare-runs?${q}`;
    },
  }, "Compare all");

  // -- the virtualised table ----------------------------------------------------------
  const head = h("div", { class: "vhead", role: "row" });
  const body = h("div", { class: "vrows" });
  const spacer = h("div", { class: "vspacer" }, body);
  const inner = h("div", { class: "vinner" }, head, spacer);
  const scroller = h("div", { class: "vtable", role: "table", "aria-label": "Runs" }, inner);
  let cols = [];

  const sortFn = () => {
    if (!state.sort) return null;
    const desc = state.sort.startsWith("-");
    const col = cols.find((c) => c.id === state.sort.replace(/^-/, ""));
    if (!col) return null;
    return (a, b) => {
      const va = col.get(a);
      const vb = col.get(b);
      const empty = (v) => v === undefined || v === null || v === "";
      if (empty(va) || empty(vb)) return compare(va, vb); // empty last either way
      return desc ? compare(vb, va) : compare(va, vb);
    };
  };

  const layout = () => {
    cols = [
      ...baseColumns(),
      ...(state.cols || []).map((id) => keyColumn(id, state, metricValue, metricStep)).filter(Boolean),
    ];
    const template = ["32px", ...cols.map((c) => `${c.width}px`)].join(" ");
    inner.style.setProperty("--cols", template);
    inner.style.width = `${32 + cols.reduce((s, c) => s + c.width, 0) + 8}px`;
    fill(
      head,
      h("div", { class: "cell" }),
      cols.map((c) => {
        const active = state.sort.replace(/^-/, "") === c.id;
        const arrow = active ? (state.sort.startsWith("-") ? " ▼" : " ▲") : "";
        return h(
          "div",
          {
            class: `cell head ${c.kind || ""}`,
            role: "columnheader",
            title: c.id,
            onclick: () => {
              state.sort = active && !state.sort.startsWith("-") ? `-${c.id}` : active ? "" : c.id;
              saveState();
              layout();
            },
          },
          c.label + arrow,
        );
      }),
    );
    rebuild();
  };

  const rebuild = () => {
    rows = flatten(runs, sortFn(), collapsed);
    spacer.style.height = `${rows.length * ROW}px`;
    count.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"}${loading ? " (loading…)" : ""}`;
    draw();
  };

  let drawn = [-1, -1];
  const draw = (force = true) => {
    const first = Math.max(0, Math.floor(scroller.scrollTop / ROW) - 10);
    const last = Math.min(rows.length, first + Math.ceil((scroller.clientHeight || 600) / ROW) + 20);
    if (!force && drawn[0] === first && drawn[1] === last) return;
    drawn = [first, last];
    const out = [];
    for (let i = first; i < last; i++) out.push(rowElement(rows[i], i));
    body.replaceChildren(...out);
  };

  const rowElement = ({ run, depth, children }, i) => {
    const id = run.info.run_id;
    const check = h("input", {
      type: "checkbox",
      checked: selected.has(id),
      "aria-label": `select ${run.info.run_name}`,
      onchange: (e) => {
        if (e.target.checked) selected.add(id);
        else selected.delete(id);
        compareBtn.disabled = selected.size < 2;
        compareBtn.textContent = selected.size ? `Compare ${selected.size}` : "Compare";
      },
    });
    const toggle = children
      ? h("button", {
          type: "button",
          class: "toggle",
          "aria-label": collapsed.has(id) ? "expand" : "collapse",
          onclick: () => {
            if (collapsed.has(id)) collapsed.delete(id);
            else collapsed.add(id);
            rebuild();
          },
        }, collapsed.has(id) ? "▸" : "▾")
      : h("span", { class: "toggle" });
    const cells = cols.map((c) => {
      if (c.id === "name") {
        return h(
          "div",
          { class: "cell name", role: "cell" },
          h("span", { class: "indent", style: `width:${depth * 16}px` }),
          toggle,
          h("a", { href: `#/experiments/${eid}/runs/${id}`, title: id }, run.info.run_name || id),
          children ? h("span", { class: "muted" }, ` (${children})`) : null,
        );
      }
      const content = c.cell ? c.cell(run) : c.text ? c.text(run) : c.get(run) ?? "";
      return h("div", { class: `cell ${c.kind || ""}`, role: "cell", title: typeof content === "string" ? content : null }, content);
    });
    return h(
      "div",
      {
        class: `row${run.info.lifecycle_stage === "deleted" ? " deleted" : ""}`,
        role: "row",
        style: `top:${i * ROW}px`,
        dataset: { runId: id },
      },
      h("div", { class: "cell" }, check),
      cells,
    );
  };

  let frame = 0;
  scroller.addEventListener("scroll", () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(() => draw(false));
  });

  // -- loading ------------------------------------------------------------------------
  const load = async () => {
    if (loading) loading.abort();
    const ctl = new AbortController();
    loading = ctl;
    runs = [];
    filterError.hidden = true;
    filterInput.classList.remove("bad");
    rebuild();
    let token = null;
    try {
      do {
        const page = await getJSON(
          `/experiments/${eid}/runs`,
          {
            filter: state.filter,
            view: state.deleted ? "all" : "active",
            max_results: token ? PAGE : FIRST_PAGE,
            page_token: token,
          },
          { signal: ctl.signal },
        );
        if (ctl !== loading) return;
        if (!state.cols) {
          state.cols = defaultColumns(page.runs);
          await loadExtremes();
          layout();
        }
        runs = runs.concat(page.runs);
        token = page.next_page_token;
        if (!token) loading = null;
        rebuild();
      } while (token);
    } catch (e) {
      if (e.name === "AbortError") return;
      if (ctl === loading) loading = null;
      if (e instanceof ApiError && e.status === 400) {
        // The search error names the position and draws a caret under it.
        filterError.textContent = e.message;
        filterError.hidden = false;
        filterInput.classList.add("bad");
        rebuild();
      } else throw e;
    }
  };

  fill(
    root,
    h(
      "div",
      { class: "toolbar" },
      h("label", { class: "grow" }, filterInput),
      h("label", {}, deleted, " deleted"),
      h("label", {}, "metrics: ", agg, " ", stepInput),
      picker,
      compareBtn,
      compareAll,
      count,
    ),
    filterError,
    scroller,
  );
  await loadExtremes();
  layout();
  await load();
  return { destroy: () => loading && loading.abort() };
}

function columnPicker(eid, state, changed) {
  const search = h("input", { type: "search", placeholder: "Find a column", "aria-label": "Find a column" });
  const list = h("div", { class: "picker-list" }, h("p", { class: "muted" }, "Loading…"));
  let columns = null;
  const opened = new Map(); // prefix group -> open, as the user left it
  let groupBoxes = []; // [checkbox, column ids] of each prefix group
  let pickBoxes = []; // [checkbox, column id] of each column
  const chosen = () => state.cols || [];
  const syncGroups = () => {
    for (const [box, id] of pickBoxes) box.checked = chosen().includes(id);
    for (const [box, ids] of groupBoxes) {
      const n = ids.filter((id) => chosen().includes(id)).length;
      box.checked = n === ids.length;
      box.indeterminate = n > 0 && n < ids.length;
    }
  };
  const choose = (ids, on) => {
    const now = chosen().filter((c) => !ids.includes(c));
    state.cols = on ? [...now, ...ids] : now;
    syncGroups();
    changed();
  };
  const pick = (id, label) => {
    const box = h("input", { type: "checkbox", onchange: (e) => choose([id], e.target.checked) });
    pickBoxes.push([box, id]);
    return h("label", { class: "pick", title: id }, box, ` ${label}`);
  };
  // A prefix (train/, val/, ...): its keys in a collapsible group whose own checkbox
  // adds or removes every column of the group.
  const prefixGroup = (kind, g, searching, few) => {
    const id = `${kind}.${g.id}`;
    const ids = g.keys.map((k) => `${kind}.${k}`);
    const all = h("input", {
      type: "checkbox",
      "aria-label": `all ${kind} ${g.title}/`,
      onchange: (e) => choose(ids, e.target.checked),
    });
    groupBoxes.push([all, ids]);
    const el = h(
      "details",
      // Open while searching; else as the user left it, first open when the keys are few.
      { class: "key-group", open: searching || (opened.get(id) ?? few), dataset: { group: g.id } },
      h("summary", {}, all, ` ${g.title}/ `, h("span", { class: "muted" }, `(${g.keys.length})`)),
      g.keys.map((k) => pick(`${kind}.${k}`, shortName(k, g.title))),
    );
    el.addEventListener("toggle", () => {
      if (!searching) opened.set(id, el.open);
    });
    return el;
  };
  const render = () => {
    if (!columns) return;
    const q = search.value.trim().toLowerCase();
    groupBoxes = [];
    pickBoxes = [];
    const groups = ["metrics", "params", "tags"].map((kind) => {
      const keys = columns[kind].filter((k) => !q || k.toLowerCase().includes(q)).slice(0, 300);
      return h(
        "fieldset",
        { dataset: { kind } },
        h("legend", {}, kind),
        groupByPrefix(keys).map((g) =>
          g.title
            ? prefixGroup(kind, g, !!q, keys.length <= FLAT_KEYS)
            : g.keys.map((k) => pick(`${kind}.${k}`, k)),
        ),
      );
    });
    fill(list, groups);
    syncGroups();
  };
  search.addEventListener("input", render);
  const details = h("details", { class: "picker" }, h("summary", {}, "Columns"), h("div", { class: "picker-panel" }, search, list));
  // The keys of every run are read only when the picker opens.
  details.addEventListener("toggle", async () => {
    if (!details.open || columns) return;
    try {
      columns = (await getJSON(`/experiments/${eid}/columns`)).columns;
      render();
    } catch (e) {
      fill(list, h("p", { class: "error" }, e.message));
    }
  });
  return details;
}
