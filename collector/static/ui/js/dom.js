// Element building for every page. User data only ever enters the DOM as text nodes or
// attribute values (never through innerHTML), so a run named "<img onerror=...>" is text.

/**
 * Build an element: h("a", {href: "#/x", class: "c", onclick: fn}, "text", childNode).
 * Strings and numbers among the children become text nodes; null/false are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (typeof v === "boolean" || k === "value") el[k] = v;
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** Append children (nested arrays flattened) to an element as nodes or text. */
export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** Debounce a function by ms. */
export function debounce(fn, ms) {
  let t = 0;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/** Set the breadcrumbs in the header: [[label, href|null], ...]. */
export function crumbs(items) {
  const nav = document.getElementById("crumbs");
  fill(
    nav,
    items.map(([label, href], i) => [
      i ? h("span", { class: "sep" }, "/") : null,
      href ? h("a", { href }, label) : h("span", {}, label),
    ]),
  );
  document.title = items.length ? `${items[items.length - 1][0]} · flightlog` : "flightlog";
}

/** A status badge. */
export function statusBadge(status) {
  return h("span", { class: `status status-${String(status).toLowerCase()}` }, status);
}
