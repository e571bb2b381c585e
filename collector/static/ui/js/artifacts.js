// A run's artifact browser: a lazily expanded tree and a preview pane. Text, JSON,
// YAML and CSV are shown as text (CSV as a table); raster images as blob: images.
// HTML, SVG and everything else are offered for download only, never rendered.
import { request, getJSON, download } from "./api.js";
import { h, fill } from "./dom.js";

const IMAGE = /\.(png|jpe?g|gif|webp|bmp)$/i;
const TABLE = /\.(csv|tsv)$/i;
const JSONISH = /\.json$/i;
const TEXT = /\.(txt|log|json|ya?ml|csv|tsv|md|py|cfg|ini|toml|out|err|sh|jsonl)$|(^|\/)(MLmodel|MLproject)$/i;
const MAX_TABLE_ROWS = 1000;

/** Parse CSV (RFC 4180 quoting) or TSV text into rows of cells. */
export function parseDelimited(text, sep = ",") {
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"') {
        if (text[i + 1] === '"') {
          cell += '"';
          i++;
        } else quoted = false;
      } else cell += ch;
    } else if (ch === '"' && cell === "") quoted = true;
    else if (ch === sep) {
      row.push(cell);
      cell = "";
    } else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && text[i + 1] === "\n") i++;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
      if (rows.length > MAX_TABLE_ROWS) break;
    } else cell += ch;
  }
  if (cell !== "" || row.length) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}

function basename(p) {
  return p.slice(p.lastIndexOf("/") + 1);
}

function size(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** The artifact browser for a run. */
export function artifactBrowser(runId) {
  const base = `/runs/${encodeURIComponent(runId)}`;
  const tree = h("ul", { class: "tree", role: "tree" });
  const pane = h("div", { class: "preview", "aria-live": "polite" }, h("p", { class: "muted" }, "Select a file to preview it."));
  let previewUrl = null;

  const showFile = async (f) => {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    const name = basename(f.path);
    const dl = h("button", { type: "button", onclick: () => download(`${base}/artifact`, { path: f.path, download: 1 }, name) }, "Download");
    const head = h("div", { class: "preview-head" }, h("strong", {}, f.path), h("span", { class: "muted" }, ` ${size(f.file_size)} `), dl);
    fill(pane, head, h("p", { class: "muted" }, "Loading…"));
    if (!IMAGE.test(name) && !TEXT.test(f.path)) {
      fill(pane, head, h("p", { class: "muted" }, "No preview for this file type (HTML and SVG are never rendered here); download it to open it."));
      return;
    }
    try {
      const r = await request(`${base}/artifact`, { path: f.path });
      const truncated = r.headers.get("X-Flightlog-Truncated") === "1";
      let body;
      if (IMAGE.test(name)) {
        previewUrl = URL.createObjectURL(await r.blob());
        body = h("img", { class: "artifact-image", src: previewUrl, alt: f.path });
      } else {
        const text = await r.text();
        if (TABLE.test(name)) body = csvTable(parseDelimited(text, /\.tsv$/i.test(name) ? "\t" : ","));
        else if (JSONISH.test(name)) {
          let shown = text;
          try {
            shown = JSON.stringify(JSON.parse(text), null, 2);
          } catch {
            // not valid JSON (or cut short): show it as it is
          }
          body = h("pre", { class: "text-preview" }, shown);
        } else body = h("pre", { class: "text-preview" }, text);
      }
      fill(pane, head, truncated ? h("p", { class: "muted" }, "Showing the first 2 MiB.") : null, body);
    } catch (e) {
      fill(pane, head, h("p", { class: "error" }, e.message));
    }
  };

  const listInto = async (ul, path) => {
    const { files } = await getJSON(`${base}/artifacts`, { path });
    fill(
      ul,
      files.length ? null : h("li", { class: "muted" }, "No artifacts"),
      files.map((f) => {
        const name = basename(f.path);
        if (!f.is_dir) {
          return h("li", { role: "treeitem" }, h("button", { type: "button", class: "file", onclick: () => showFile(f) }, name));
        }
        const sub = h("ul", { class: "tree", hidden: true });
        const btn = h("button", {
          type: "button",
          class: "dir",
          "aria-expanded": "false",
          onclick: async () => {
            const open = sub.hidden;
            sub.hidden = !open;
            btn.setAttribute("aria-expanded", String(open));
            if (open && !sub.childElementCount) await listInto(sub, f.path);
          },
        }, `${name}/`);
        return h("li", { role: "treeitem" }, btn, sub);
      }),
    );
  };

  const el = h("div", { class: "artifacts" }, tree, pane);
  listInto(tree, "").catch((e) => fill(tree, h("li", { class: "error" }, e.message)));
  return el;
}

function csvTable(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "Empty file");
  const [header, ...rest] = rows;
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      { class: "grid csv" },
      h("thead", {}, h("tr", {}, header.map((c) => h("th", {}, c)))),
      h("tbody", {}, rest.slice(0, MAX_TABLE_ROWS).map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))),
    ),
    rest.length > MAX_TABLE_ROWS ? h("p", { class: "muted" }, `First ${MAX_TABLE_ROWS} rows shown.`) : null,
  );
}
