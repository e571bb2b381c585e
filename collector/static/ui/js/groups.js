// Metric keys grouped by prefix (train/, val/, system/): the collapsible chart sections
// of the run and compare pages, with key search. A closed section holds no chart: its
// charts are built when it is first opened, and the charts of a section closed again
// leave the screen, so LazyCharts unmounts them as it does for charts scrolled away.
import { h, fill } from "./dom.js";

/**
 * Keys grouped by their prefix before the first "/" (train/loss -> train), as
 * [{id, title, keys}]: keys without a prefix first (title ""), then prefixes in order,
 * system last.
 */
export function groupByPrefix(keys) {
  const groups = new Map();
  for (const k of keys) {
    const i = k.indexOf("/");
    const g = i > 0 ? k.slice(0, i) : "";
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(k);
  }
  const rank = (g) => (g === "" ? 0 : g === "system" ? 2 : 1);
  return [...groups]
    .sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b))
    .map(([g, ks]) => ({ id: g, title: g, keys: ks }));
}

/** Up to this many charts are one grid; more are sections by prefix (a few charts read
 * better side by side than each under its own heading). */
export const FLAT_KEYS = 12;

/** The chart sections for keys (those a search left of ``total`` keys): one untitled
 * grid when the page has a few keys, else groupByPrefix. */
export function chartGroups(keys, total = keys.length) {
  return total <= FLAT_KEYS ? [{ id: "", title: "", keys }] : groupByPrefix(keys);
}

/** Where a system key belongs: {node, part} (part: "host", "GPU n" or "rank n"). */
function systemPlace(key) {
  const parts = key.split("/"); // system/[<node>/][rank_<r>/]<name>
  const middle = parts.slice(1, -1);
  const name = parts[parts.length - 1];
  const rank = middle.length && /^rank_(\d+)$/.exec(middle[middle.length - 1]);
  if (rank) middle.pop();
  const gpu = /^gpu_(\d+)_/.exec(name);
  const part = gpu ? `GPU ${gpu[1]}` : rank ? `rank ${rank[1]}` : "host";
  return { node: middle.join("/"), part };
}

/**
 * System keys as sections: one per node when the run has node-labelled keys
 * (system/<node>/...), each holding the host's charts, then one section per GPU, then
 * per-rank process charts; without node labels those sections directly.
 */
export function systemGroups(keys) {
  const nodes = new Map();
  for (const k of keys) {
    const { node, part } = systemPlace(k);
    if (!nodes.has(node)) nodes.set(node, new Map());
    const parts = nodes.get(node);
    if (!parts.has(part)) parts.set(part, []);
    parts.get(part).push(k);
  }
  const order = (p) => (p === "host" ? " " : p); // host first, then GPU n, rank n
  const sections = (node, parts) =>
    [...parts]
      .sort(([a], [b]) => order(a).localeCompare(order(b), undefined, { numeric: true }))
      .map(([part, ks]) => ({ id: `system/${node}:${part}`, title: part, keys: ks }));
  const labelled = [...nodes.keys()].some(Boolean);
  if (!labelled) return nodes.size ? sections("", nodes.get("")) : [];
  return [...nodes]
    .sort(([a], [b]) => a.localeCompare(b, undefined, { numeric: true }))
    .map(([node, parts]) => ({
      id: `system/${node}`,
      title: node ? `node ${node}` : "unlabelled node",
      node,
      children: sections(node, parts),
    }));
}

/** A chart's title: its key without the group's prefix (train/, system/gpu_0_, ...). */
export function shortName(key, group) {
  if (key.startsWith("system/")) return key.split("/").pop().replace(/^gpu_\d+_/, "");
  return group && key.startsWith(`${group}/`) ? key.slice(group.length + 1) : key;
}

function countKeys(group) {
  return group.children ? group.children.reduce((n, c) => n + countKeys(c), 0) : group.keys.length;
}

/**
 * Collapsible chart sections. ``slot(key, group)`` makes a chart placeholder (a
 * LazyCharts slot); ``closed`` is the set of section ids the user closed, kept across
 * renders; ``searching`` opens every section (a key search shows every match).
 */
export function chartSections(groups, { slot, closed, searching = false, wide = false }) {
  const section = (g, depth) => {
    const grid = () =>
      g.children
        ? g.children.map((c) => section(c, depth + 1))
        : h("div", { class: `chart-grid${wide ? " wide" : ""}` }, g.keys.map((k) => slot(k, g)));
    if (!g.title && !g.children) return h("div", { class: "chart-group", dataset: { group: g.id } }, grid());
    const open = searching || !closed.has(g.id);
    const body = h("div", { class: "group-body" });
    let built = false;
    const build = () => {
      if (!built) fill(body, grid());
      built = true;
    };
    const el = h(
      "details",
      { class: `chart-group depth-${depth}`, open, dataset: { group: g.id } },
      h(
        "summary",
        {},
        h(depth ? "h4" : "h3", {}, g.title, h("span", { class: "muted count" }, ` · ${countKeys(g)}`)),
      ),
      body,
    );
    el.addEventListener("toggle", () => {
      if (el.open) build();
      if (searching) return; // opened by the search, not by the user
      if (el.open) closed.delete(g.id);
      else closed.add(g.id);
    });
    if (open) build();
    return el;
  };
  return groups.map((g) => section(g, 0));
}
