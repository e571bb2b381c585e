// The first data request of the page, started while the other modules still load.
// index.html runs this module on its own ("async", no imports), so on a run page the
// run's JSON is on its way before main.js and its imports have even arrived; api.js
// imports the same module (one instance per URL) and takes the answer instead of asking
// again. Without this the run page waits for every module, then for the run, then for
// the charts: three round trips in a row before the first chart.
export const UI = "/api/flightlog/ui";
const TOKEN_KEY = "flightlog.token";
const started = new Map(); // URL -> Promise<Response>

/** URL of an endpoint with query parameters (arrays repeat the name). */
export function endpoint(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v == null || v === "") continue;
    for (const x of Array.isArray(v) ? v : [v]) q.append(k, String(x));
  }
  const s = q.toString();
  return UI + path + (s ? `?${s}` : "");
}

/** The prefetched answer for a URL, once (null when none was started). */
export function takePrefetched(url) {
  const r = started.get(url);
  started.delete(url);
  return r || null;
}

function prefetch(path, params) {
  const url = endpoint(path, params);
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token != null ? { Authorization: `Bearer ${token}` } : {};
  // A failure here is left to api.js, which asks again.
  started.set(url, fetch(url, { headers }).catch(() => null));
}

// The same URLs the pages ask for first (run.js, compare.js).
const hash = location.hash.replace(/^#/, "");
const [path, query] = hash.split("?");
const run = /^\/experiments\/[^/]+\/runs\/([^/]+)\/?$/.exec(path);
if (run) prefetch(`/runs/${encodeURIComponent(decodeURIComponent(run[1]))}`);
if (/^\/compare-runs\/?$/.test(path)) {
  const q = new URLSearchParams(query || "");
  const eid = q.get("experiment");
  if (!q.get("runs") && eid) {
    prefetch(`/experiments/${encodeURIComponent(eid)}`);
    prefetch(`/experiments/${encodeURIComponent(eid)}/runs`, { filter: q.get("filter"), max_results: 1000 });
  }
}
