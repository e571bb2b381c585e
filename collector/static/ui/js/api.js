// Calls to the collector's JSON endpoints (/api/flightlog/ui/...). In token mode the
// first 401 asks for the token once; it is kept in this tab's sessionStorage and sent as
// "Authorization: Bearer", never put in a URL.
import { h } from "./dom.js";
import { UI, endpoint, takePrefetched } from "./prefetch.js";

const TOKEN_KEY = "flightlog.token";
export { UI, endpoint };

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let asking = null;

function askToken(wrong) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const input = h("input", {
      type: "password",
      name: "token",
      autocomplete: "current-password",
      placeholder: "token",
      "aria-label": "token",
    });
    const dialog = h(
      "form",
      { class: "token-dialog", id: "token-dialog" },
      h("h2", {}, "This collector needs a token"),
      h("p", { class: "muted" }, wrong ? "That token was refused. Try again." :
        "Enter the collector's token (flightlog collector --token). It is kept for this tab only."),
      input,
      h("button", { type: "submit" }, "Continue"),
    );
    dialog.addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value);
      dialog.remove();
      asking = null;
      resolve();
    });
    document.body.append(dialog);
    input.focus();
  });
  return asking;
}


/**
 * Fetch an endpoint with the token; throws ApiError with the server's message. With
 * ``body``, POST it as JSON (for arguments too long for a URL).
 */
export async function request(path, params, { signal, body } = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token != null ? { Authorization: `Bearer ${token}` } : {};
    const init = { headers, signal };
    if (body !== undefined) {
      init.method = "POST";
      init.body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    const url = endpoint(path, params);
    const r = (body === undefined && (await takePrefetched(url))) || (await fetch(url, init));
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      await askToken(token != null);
      continue;
    }
    if (!r.ok) {
      let body = {};
      try {
        body = await r.json();
      } catch {
        // not JSON: keep the status text
      }
      throw new ApiError(r.status, body.error_code, body.message || r.statusText);
    }
    return r;
  }
}

/** GET an endpoint's JSON. */
export async function getJSON(path, params, opts) {
  return (await request(path, params, opts)).json();
}

/** POST a JSON body to an endpoint; its JSON answer. */
export async function postJSON(path, body, opts) {
  return (await request(path, null, { ...opts, body })).json();
}

/** Save a response as a download (works with the token, unlike a plain link). */
export async function download(path, params, filename) {
  const blob = await (await request(path, params)).blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
