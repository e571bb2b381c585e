// The page's router. The part of the URL after "#" is the page, as in MLflow's UI:
//   #/                                      experiments
//   #/experiments/<id>                      an experiment's runs (MLflow's link)
//   #/experiments/<id>/runs/<run_id>        a run (MLflow's link)
//   #/compare-runs?runs=<id>,<id>,...       runs compared
// Pages keep their own state (filter, columns, ...) in the query after "?", replaced
// in place, so the address can be shared.
import { h, fill } from "./dom.js";
import { experimentsPage } from "./experiments.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { comparePage } from "./compare.js";

const ROUTES = [
  [/^\/?$/, (root, m, q) => experimentsPage(root, q)],
  [/^\/experiments\/([^/]+)\/?$/, (root, m, q) => runsPage(root, decodeURIComponent(m[1]), q)],
  [
    /^\/experiments\/([^/]+)\/runs\/([^/]+)\/?$/,
    (root, m, q) => runPage(root, decodeURIComponent(m[1]), decodeURIComponent(m[2]), q),
  ],
  [/^\/compare-runs\/?$/, (root, m, q) => comparePage(root, q)],
];

let current = null;

/** The hash split into a path and its query. */
export function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const i = raw.indexOf("?");
  const path = i < 0 ? raw : raw.slice(0, i);
  return { path, query: new URLSearchParams(i < 0 ? "" : raw.slice(i + 1)) };
}

/** Replace the current page's query without navigating (shareable state). */
export function setQuery(query) {
  const { path } = parseHash();
  const s = query.toString();
  history.replaceState(null, "", `#${path}${s ? `?${s}` : ""}`);
}

async function route() {
  if (current && current.destroy) current.destroy();
  current = null;
  const root = document.getElementById("app");
  fill(root);
  const { path, query } = parseHash();
  for (const [re, page] of ROUTES) {
    const m = re.exec(path);
    if (m) {
      try {
        current = await page(root, m, query);
      } catch (e) {
        fill(root, h("p", { class: "error", role: "alert" }, e.message || String(e)));
      }
      return;
    }
  }
  fill(root, h("p", { class: "error" }, `No page at #${path}`), h("a", { href: "#/" }, "Experiments"));
}

window.addEventListener("hashchange", route);
route();
