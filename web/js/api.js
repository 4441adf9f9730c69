// Owns: every request to the fetalhc server (fetch is called here and nowhere else), the bearer
// token (on every API request, and as the SameSite=Strict cookie fetalhc_token so that image and
// CSV links load too), the X-Fetalhc-Request header the server requires on multipart writes (a
// page on another site cannot send it without a CORS preflight), and the one place that turns a
// failed response into an Error.
//
// Server errors: {"error": {"code": "...", "message": "..."}}, or the older {"error": "..."}; both
// are read. A thrown Error has .status (HTTP status) and, when the server sent one, .code.

let tokenOf = () => '';
let onUnauthorized = () => {};

// token: () => the bearer token ('' for none); unauthorized: called on every 401.
export function configureApi({ token, unauthorized }) {
  if (token) tokenOf = token;
  if (unauthorized) onUnauthorized = unauthorized;
}

// The text of a server error body, or null when it has none.
export function errorMessage(body) {
  const e = body && body.error;
  if (!e) return null;
  if (typeof e === 'object') {
    return typeof e.message === 'string' && e.message ? e.message : (typeof e.code === 'string' && e.code) || null;
  }
  return String(e);
}

function errorCode(body) {
  const e = body && body.error;
  return e && typeof e === 'object' && typeof e.code === 'string' ? e.code : undefined;
}

// fetch, with network failures reworded for people.
async function send(path, options) {
  try {
    return await fetch(path, options);
  } catch (err) {
    throw new Error('Cannot reach the fetalhc server (' + err.message + ').');
  }
}

// A JSON request: the parsed body (null when not JSON), or a thrown Error with the server's reason.
async function request(path, options = {}) {
  const token = tokenOf();
  const headers = { ...(options.headers || {}), 'X-Fetalhc-Request': '1' };
  if (token) {
    headers.Authorization = 'Bearer ' + token;
    document.cookie = `fetalhc_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
  }
  options = { ...options, headers };
  const res = await send(path, options);
  const type = res.headers.get('content-type') || '';
  let body = null;
  if (type.includes('application/json')) {
    try { body = await res.json(); } catch (_) { body = null; }
  }
  if (!res.ok) {
    const err = new Error(errorMessage(body) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    const code = errorCode(body);
    if (code !== undefined) err.code = code;
    if (res.status === 401) onUnauthorized();
    throw err;
  }
  return body;
}

const postJson = (path, body) =>
  request(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });

// GET /health: true when the model is loaded, false while it loads or failed; throws when unreachable.
export async function healthReady() {
  const res = await send('/health');
  return res.ok;
}

// GET /v1/me: {user, role} of the token in use (user null on a server without users or tokens).
export const whoAmI = () => request('/v1/me');

// POST /v1/measure with a FormData (image, pixel_size_mm, optional ga_weeks, pregnancy_id, exam_date).
export const measure = (formData) => request('/v1/measure', { method: 'POST', body: formData });

// POST /v1/perimeter: sizes, GA and centile of an ellipse.
export const perimeter = (body) => postJson('/v1/perimeter', body);

// POST /v1/exams: store an accepted exam.
export const saveExam = (body) => postJson('/v1/exams', body);

// GET /v1/growth-curve: the INTERGROWTH-21st centile curves.
export const growthCurve = () => request('/v1/growth-curve');

// GET /v1/pregnancies/{id}: the accepted exams (404 when there are none).
export const pregnancy = (pid) => request(`/v1/pregnancies/${encodeURIComponent(pid)}`);

// The CSV export of a pregnancy (a link the browser downloads, not fetched here).
export const exportCsvUrl = (pid) => `/v1/pregnancies/${encodeURIComponent(pid)}/export.csv`;
