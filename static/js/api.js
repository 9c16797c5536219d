/* Shared helpers of TumorMap's pages: calls to the REST API with the session cookie and the
   CSRF token, paginated lists, small DOM and number formatting helpers. */
(function (global) {
  "use strict";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  class ApiError extends Error {
    constructor(status, body) {
      const message = (body && (body.message || body.detail)) || `HTTP ${status}`;
      super(message);
      this.status = status;
      this.body = body || {};
      this.code = this.body.code || "";
    }
  }

  /* fetch() with the session cookie, the CSRF token on writes and JSON both ways. A FormData
     or Blob body is sent as it is. Resolves to the parsed JSON (null for 204), rejects with an
     ApiError carrying the API's {code, message, details}. */
  async function api(url, { method = "GET", body, headers = {} } = {}) {
    const init = { method, headers: { Accept: "application/json", ...headers },
                   credentials: "same-origin" };
    if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = csrfToken();
    if (body !== undefined) {
      if (body instanceof FormData || body instanceof Blob) {
        init.body = body;
      } else {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, { code: "network", message: "The server cannot be reached." });
    }
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json().catch(() => null) : null;
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  /* Every item of a paginated list ({count, next, previous, results}). */
  async function apiAll(url, limit = 5000) {
    const items = [];
    let next = url;
    while (next && items.length < limit) {
      const page = await api(next);
      if (Array.isArray(page)) return page;
      items.push(...page.results);
      next = page.next;
    }
    return items;
  }

  /* document.createElement with attributes, properties and children in one call. */
  function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
    if (m) return `${m} min ${String(s).padStart(2, "0")} s`;
    return `${s} s`;
  }

  function formatNumber(x, digits = 3) {
    return x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(digits);
  }

  /* Announce a message in a status element (role="status" / aria-live). */
  function say(element, message, kind = "") {
    if (!element) return;
    element.textContent = message;
    element.classList.toggle("error", kind === "error");
    element.classList.toggle("ok", kind === "ok");
  }

  function jsonData(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  global.TM = { api, apiAll, ApiError, csrfToken, h, formatBytes, formatDuration, formatNumber,
                say, jsonData };
})(window);
