// The experiments page: name search, run counts, last activity, tags.
import { getJSON } from "./api.js";
import { h, fill, crumbs } from "./dom.js";
import { dateTime, ago } from "./format.js";

/** Render the experiments list into root. */
export async function experimentsPage(root) {
  crumbs([["Experiments", null]]);
  const { experiments } = await getJSON("/experiments");
  const search = h("input", {
    type: "search",
    class: "search",
    placeholder: "Search experiments by name",
    "aria-label": "Search experiments",
  });
  const showDeleted = h("input", { type: "checkbox" });
  const body = h("tbody");
  const count = h("span", { class: "muted" });
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const rows = experiments
      .filter((e) => showDeleted.checked || e.lifecycle_stage === "active")
      .filter((e) => !q || e.name.toLowerCase().includes(q))
      .sort((a, b) => (b.last_activity ?? 0) - (a.last_activity ?? 0));
    count.textContent = `${rows.length} of ${experiments.length}`;
    fill(
      body,
      rows.map((e) =>
        h(
          "tr",
          { class: e.lifecycle_stage === "deleted" ? "deleted" : null },
          h("td", {}, h("a", { href: `#/experiments/${encodeURIComponent(e.experiment_id)}` }, e.name)),
          h("td", { class: "num" }, e.experiment_id),
          h("td", { class: "num" }, e.run_count),
          h("td", { title: dateTime(e.last_activity) }, ago(e.last_activity)),
          h("td", {}, Object.entries(e.tags)
            .filter(([k]) => !k.startsWith("mlflow."))
            .map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`))),
        ),
      ),
    );
  };
  search.addEventListener("input", render);
  showDeleted.addEventListener("change", render);
  fill(
    root,
    h("div", { class: "toolbar" }, search, h("label", {}, showDeleted, " deleted"), count),
    h(
      "table",
      { class: "grid experiments" },
      h("thead", {}, h("tr", {}, ["Name", "ID", "Runs", "Last activity", "Tags"].map((t) => h("th", {}, t)))),
      body,
    ),
  );
  render();
  search.focus();
  return {};
}
