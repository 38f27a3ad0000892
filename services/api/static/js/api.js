// The one way the UI talks to the server. Changes carry the session's CSRF token;
// a 401 sends the browser to the sign-in page; when the server cannot be reached,
// reads wait and retry (the banner says so) and changes fail with a clear message.
import { connection } from "./connection.js";

let csrfToken = "";

export const session = {
  /** `GET /api/me`: {name, role, auth_required, csrf_token}. */
  me: null,
  get isAdmin() {
    return this.me?.role === "admin";
  },
  /** Admin features that only make sense with several users (server mode). */
  get managesUsers() {
    return Boolean(this.me?.auth_required) && this.isAdmin;
  },
};

export function setCsrf(token) {
  csrfToken = token || "";
}

let leaving = false;

/** Signing out: answers still arriving must not send the browser anywhere else. */
export function leave(to) {
  leaving = true;
  location.assign(to);
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail ? String(body.detail) : `the server answered ${status}`);
    this.status = status;
    this.field = body?.field || null;
    this.type = body?.type || null;
  }
}

async function body(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 300) };
  }
}

export function signInUrl() {
  return `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
}

/**
 * Call the API. `json` sends a JSON body, `form` a FormData (multipart).
 * GET requests retry until the server answers; others throw ApiError at once.
 */
export async function api(path, { method = "GET", json, form, retry } = {}) {
  const headers = {};
  let payload;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  } else if (form !== undefined) {
    payload = form;
  }
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const retrying = retry ?? method === "GET";
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
    } catch {
      connection.down("no answer");
      if (!retrying) throw new ApiError(0, { detail: "the server is unreachable; try again in a moment" });
      await connection.wait(attempt);
      continue;
    }
    if ([502, 503, 504].includes(response.status)) {
      const data = await body(response);
      connection.down(data?.detail || `HTTP ${response.status}`);
      if (!retrying) throw new ApiError(response.status, data);
      await connection.wait(attempt);
      continue;
    }
    connection.up();
    if (response.status === 401) {
      if (!leaving) location.assign(signInUrl());
      throw new ApiError(401, await body(response));
    }
    if (response.status === 204) return null;
    const data = await body(response);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}

/** Every page of a paginated list (bounded). */
export async function all(path, limit = 500) {
  const sep = path.includes("?") ? "&" : "?";
  return (await api(`${path}${sep}limit=${limit}`)).items;
}
