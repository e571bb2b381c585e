// A run: status, times, params, tags, parent and children, description; a chart for
// every metric key (small multiples mounted only on screen, key search, collapsible
// sections by prefix); system metrics per node and per GPU on the training charts' time
// axis; artifacts. A RUNNING
// run's page polls for its status and for the points after each chart's last step.
import { getJSON } from "./api.js";
import { h, fill, crumbs, statusBadge, debounce } from "./dom.js";
import { dateTime, runDuration } from "./format.js";
import { LazyCharts, PALETTE, settingsBar, settingsFromQuery, settingsToQuery } from "./charts.js";
import { artifactBrowser } from "./artifacts.js";
import { setQuery } from "./main.js";
import { chartGroups, chartSections, shortName, systemGroups } from "./groups.js";

const LIVE_MS = 2000;

function kv(entries, empty) {
  if (!entries.length) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    { class: "grid kv" },
    h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
  );
}

function runLink(r) {
  return h(
    "a",
    { href: `#/experiments/${encodeURIComponent(r.info.experiment_id)}/runs/${r.info.run_id}` },
    r.info.run_name || r.info.run_id,
  );
}

/** Render a run's page into root. */
export async function runPage(root, experimentId, runId, query) {
  const rid = encodeURIComponent(runId);
  let data = await getJSON(`/runs/${rid}`);
  const { run, experiment } = data;
  const info = run.info;
  crumbs([
    ["Experiments", "#/"],
    [experiment.name, `#/experiments/${encodeURIComponent(info.experiment_id)}`],
    [info.run_name || info.run_id, null],
  ]);

  const settings = settingsFromQuery(query);
  settings.listeners.add(() => setQuery(settingsToQuery(settings, new URLSearchParams())));
  const charts = new LazyCharts(settings);

  const status = h("span", {}, statusBadge(info.status));
  const ended = h("dd", {}, dateTime(info.end_time));
  const took = h("dd", {}, runDuration(info));
  const tags = run.data.tags;
  const header = h(
    "section",
    { class: "run-head" },
    h("h1", {}, info.run_name || info.run_id, " ", status),
    tags["mlflow.note.content"] ? h("p", { class: "description" }, tags["mlflow.note.content"]) : null,
    h(
      "dl",
      { class: "meta" },
      h("dt", {}, "Run ID"), h("dd", { class: "mono" }, info.run_id),
      h("dt", {}, "Started"), h("dd", {}, dateTime(info.start_time)),
      h("dt", {}, "Ended"), ended,
      h("dt", {}, "Duration"), took,
      h("dt", {}, "User"), h("dd", {}, info.user_id),
      h("dt", {}, "Source"), h("dd", {}, tags["mlflow.source.name"] || ""),
      info.lifecycle_stage === "deleted" ? [h("dt", {}, "Lifecycle"), h("dd", {}, "deleted")] : null,
      data.parent ? [h("dt", {}, "Parent"), h("dd", {}, runLink(data.parent))] : null,
      data.children.length
        ? [h("dt", {}, "Children"), h("dd", { class: "children" }, data.children.map((c) => h("span", {}, runLink(c), " ")))]
        : null,
    ),
  );

  const params = Object.entries(run.data.params).sort(([a], [b]) => a.localeCompare(b));
  const tagRows = Object.entries(tags)
    .filter(([k]) => k !== "mlflow.note.content")
    .sort(([a], [b]) => a.localeCompare(b));

  // -- charts -------------------------------------------------------------------------
  const keySearch = h("input", { type: "search", class: "search", placeholder: "Search metric keys", "aria-label": "Search metric keys" });
  const chartBox = h("div", { class: "chart-groups" });
  const systemBox = h("div", { class: "chart-groups" });
  const systemSection = h("section", { class: "system", hidden: true }, h("h2", {}, "System metrics"), systemBox);
  let shownKeys = "";

  const line = (key, label) => [{ runId: info.run_id, key, label, color: PALETTE[0], start: info.start_time }];
  // On a time axis every chart spans the run's time, so training and system charts align.
  const span = () => [data.run.info.start_time, data.run.info.end_time ?? Date.now()];
  const slotFor = (timeAxis) => (key, group) => {
    const title = shortName(key, timeAxis ? "" : group.title);
    return charts.slot({ title, key, lines: line(key, title), timeAxis, span });
  };
  const closed = new Set(); // sections the user closed, kept while keys change
  const userKeyCount = () => data.metrics.filter((m) => !m.key.startsWith("system/")).length;

  const renderCharts = () => {
    const q = keySearch.value.trim().toLowerCase();
    const keys = data.metrics.map((m) => m.key).filter((k) => !q || k.toLowerCase().includes(q));
    const signature = `${q}\u0000${keys.join("\u0000")}`;
    if (signature === shownKeys) return;
    // A new key of a live run rebuilds the slots; charts already drawn keep their points.
    charts.clear(shownKeys !== "");
    shownKeys = signature;
    const user = keys.filter((k) => !k.startsWith("system/"));
    const system = keys.filter((k) => k.startsWith("system/"));
    const searching = !!q;
    fill(
      chartBox,
      user.length
        ? chartSections(chartGroups(user, userKeyCount()), { slot: slotFor(false), closed, searching })
        : h("p", { class: "muted" }, q ? "No metric key matches." : "No metrics logged."),
    );
    systemSection.hidden = !system.length;
    fill(systemBox, chartSections(systemGroups(system), { slot: slotFor(true), closed, searching }));
  };
  keySearch.addEventListener("input", debounce(renderCharts, 150));

  fill(
    root,
    header,
    h(
      "div",
      { class: "two-col" },
      h("section", {}, h("h2", {}, "Parameters"), kv(params, "No parameters.")),
      h("section", {}, h("h2", {}, "Tags"), kv(tagRows, "No tags.")),
    ),
    h(
      "section",
      { class: "metrics" },
      h("h2", {}, "Metrics"),
      h("div", { class: "toolbar" }, keySearch, settingsBar(settings)),
      chartBox,
    ),
    systemSection,
    h("section", {}, h("h2", {}, "Artifacts"), artifactBrowser(info.run_id)),
  );
  renderCharts();

  // -- live -----------------------------------------------------------------------------
  let timer = 0;
  let stopped = false;
  const tick = async () => {
    try {
      data = await getJSON(`/runs/${rid}`);
      const i = data.run.info;
      fill(status, statusBadge(i.status));
      ended.textContent = dateTime(i.end_time);
      took.textContent = runDuration(i);
      renderCharts();
      await charts.poll();
      if (i.status !== "RUNNING") return;
    } catch {
      // a failed poll is retried at the next tick
    }
    if (!stopped) timer = setTimeout(tick, LIVE_MS);
  };
  if (info.status === "RUNNING") timer = setTimeout(tick, LIVE_MS);

  return {
    destroy() {
      stopped = true;
      clearTimeout(timer);
      charts.clear();
    },
  };
}
