// Fetch helpers for /api/v1. A failed call throws an ApiError carrying the RFC 9457 problem's title and detail,
// which the router shows in the page.
export class ApiError extends Error {
  constructor(title, detail, status) {
    super(`${title}: ${detail}`);
    this.title = title;
    this.detail = detail;
    this.status = status;
  }
}

/** The API URL for a path and query parameters; empty and null parameters are left out. */
export function apiUrl(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return `/api/v1${path}${text ? `?${text}` : ""}`;
}

export async function getJson(path, params = {}) {
  const url = apiUrl(path, params);
  let response;
  try {
    response = await fetch(url, {headers: {accept: "application/json"}});
  } catch (error) {
    throw new ApiError("hopscope is not answering", `${url}: ${error.message}. Is hopscope serve running?`, 0);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const title = (body && body.title) || `HTTP ${response.status}`;
    const detail = (body && body.detail) || response.statusText || url;
    throw new ApiError(title, detail, response.status);
  }
  return body;
}
