// Owns: the image canvas (#canvas) and the working ellipse on it: drawing the image, the ellipse,
// its axes and handles (and the automatic ellipse, dashed, once corrected); dragging handles with the
// pointer, keyboard correction on the focused canvas, and the exact-value fields (#ellipse-fields).
// Every change of the working ellipse calls the onChange hook given to initEllipseEditor.
//
// For tests and tools the canvas carries data-drawn ("1" with an ellipse), data-ellipse (the ellipse
// as the API has it), data-handles (handle positions, image px) and data-dragging (the handle held).

import { el } from './dom.js';
import { handles, normalise, sameEllipse, toApi } from './geometry.js';
import { readNumber } from './inputs.js';

const HANDLE_RADIUS_CSS = 7;     // drawn handle radius, CSS pixels
const HIT_RADIUS_CSS = 14;       // pointer tolerance around a handle, CSS pixels
const MIN_SEMI_AXIS = 2;         // image pixels

const state = {
  image: null,          // HTMLImageElement shown under the ellipse
  autoEllipse: null,    // ellipse found by the server {x, y, a, b, angle}
  ellipse: null,        // working ellipse (may be un-normalised while dragging)
  drag: null,           // {handle, pointerId, dx, dy}
  hover: null,          // handle under the pointer
};
let onChange = () => {};

// ---------------------------------------------------------------- state for the other modules

export const currentEllipse = () => state.ellipse;
export const currentImage = () => state.image;

export function isCorrected() {
  return !!(state.autoEllipse && state.ellipse && !sameEllipse(state.autoEllipse, state.ellipse));
}

// Shows a newly loaded image at its own size (the ellipse, if any, stays).
export function setImage(img) {
  state.image = img;
  el.canvas.width = img.naturalWidth;
  el.canvas.height = img.naturalHeight;
  el.canvasEmpty.hidden = true;
  draw();
}

// No image to show yet (e.g. a DICOM file, shown once the server has decoded it): `note` says why.
export function clearImage(note) {
  state.image = null;
  el.canvasEmpty.textContent = note || 'No image yet.';
  el.canvasEmpty.hidden = false;
  draw();
}

// The server's ellipse (API object) becomes both the automatic and the working ellipse.
export function setAutoEllipse(apiEllipse) {
  state.autoEllipse = normalise(apiEllipse);
  state.ellipse = { ...state.autoEllipse };
  el.ellFields.disabled = false;
}

// No ellipse any more (new image or new measurement); the image stays.
export function clearEllipse() {
  state.autoEllipse = null;
  state.ellipse = null;
  el.ellFields.disabled = true;
  delete el.canvas.dataset.ellipse;
  el.canvas.dataset.drawn = '0';
}

// Back to the automatic ellipse; false when there is none.
export function resetToAuto() {
  if (!state.autoEllipse) return false;
  state.ellipse = { ...state.autoEllipse };
  return true;
}

// ---------------------------------------------------------------- drawing

// Image pixels per CSS pixel of the displayed canvas.
function canvasScale() {
  const rect = el.canvas.getBoundingClientRect();
  return rect.width > 0 ? el.canvas.width / rect.width : 1;
}

function strokeEllipse(ctx, e) {
  ctx.beginPath();
  ctx.ellipse(e.x, e.y, Math.abs(e.a), Math.abs(e.b), e.angle, 0, 2 * Math.PI);
  ctx.stroke();
}

function strokeLine(ctx, p, q) {
  ctx.beginPath();
  ctx.moveTo(p.x, p.y);
  ctx.lineTo(q.x, q.y);
  ctx.stroke();
}

// The automatic ellipse, dashed grey, when the working one differs from it.
function drawAutoOutline(ctx, k) {
  if (!state.autoEllipse || sameEllipse(state.autoEllipse, state.ellipse)) return;
  ctx.save();
  ctx.setLineDash([6 * k, 6 * k]);
  ctx.lineWidth = 1.5 * k;
  ctx.strokeStyle = 'rgba(200, 200, 200, 0.8)';
  strokeEllipse(ctx, state.autoEllipse);
  ctx.restore();
}

// The working ellipse and its two axes.
function drawEllipseAndAxes(ctx, k, e, h) {
  ctx.lineWidth = 2.5 * k;
  ctx.strokeStyle = '#ffd400';
  strokeEllipse(ctx, e);
  ctx.lineWidth = 1.5 * k;
  ctx.setLineDash([8 * k, 5 * k]);
  ctx.strokeStyle = '#38c6ff';
  strokeLine(ctx, h.major2, h.major1);
  ctx.strokeStyle = '#7dff8a';
  strokeLine(ctx, { x: 2 * e.x - h.minor.x, y: 2 * e.y - h.minor.y }, h.minor);
  ctx.setLineDash([]);
}

function drawHandles(ctx, k, h) {
  const r = HANDLE_RADIUS_CSS * k;
  const drawHandle = (name, fill) => {
    const p = h[name];
    const active = (state.drag && state.drag.handle === name) || state.hover === name;
    ctx.beginPath();
    if (name === 'center') ctx.rect(p.x - r, p.y - r, 2 * r, 2 * r);
    else ctx.arc(p.x, p.y, r, 0, 2 * Math.PI);
    ctx.fillStyle = fill;
    ctx.fill();
    ctx.lineWidth = (active ? 3 : 1.5) * k;
    ctx.strokeStyle = active ? '#ffffff' : '#111111';
    ctx.stroke();
  };
  drawHandle('major1', '#38c6ff');
  drawHandle('major2', '#38c6ff');
  drawHandle('minor', '#7dff8a');
  drawHandle('center', '#ffd400');
}

export function draw() {
  const cv = el.canvas;
  const ctx = cv.getContext('2d');
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, cv.width, cv.height);
  if (!state.image) return;
  ctx.drawImage(state.image, 0, 0);
  if (!state.ellipse) {
    cv.dataset.drawn = '0';
    return;
  }
  const k = canvasScale();
  const e = state.ellipse;
  const h = handles(e);
  // Image pixel (0, 0) is centred at canvas (0.5, 0.5).
  ctx.translate(0.5, 0.5);
  drawAutoOutline(ctx, k);
  drawEllipseAndAxes(ctx, k, e, h);
  drawHandles(ctx, k, h);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  cv.dataset.ellipse = JSON.stringify(toApi(e));
  cv.dataset.handles = JSON.stringify(h);
  cv.dataset.drawn = '1';
}

// ---------------------------------------------------------------- exact-value fields

// Shows the working ellipse in the fields (except the one being typed in).
export function syncFields() {
  if (!state.ellipse) return;
  const e = state.drag ? state.ellipse : normalise(state.ellipse);
  const active = document.activeElement;
  const put = (input, v, digits) => { if (input !== active) input.value = v.toFixed(digits); };
  put(el.ellCx, e.x, 1);
  put(el.ellCy, e.y, 1);
  put(el.ellA, Math.abs(e.a), 1);
  put(el.ellB, Math.abs(e.b), 1);
  let deg = (e.angle * 180) / Math.PI;
  deg = ((deg % 180) + 180) % 180;
  put(el.ellAngle, deg, 1);
}

function fieldChanged(input) {
  if (!state.ellipse) return;
  const v = readNumber(input);
  if (v === null || Number.isNaN(v)) { syncFields(); return; }
  const e = state.ellipse;
  if (input === el.ellCx) e.x = v;
  else if (input === el.ellCy) e.y = v;
  else if (input === el.ellA) e.a = Math.max(MIN_SEMI_AXIS, v);
  else if (input === el.ellB) e.b = Math.max(MIN_SEMI_AXIS, v);
  else e.angle = (v * Math.PI) / 180;
  state.ellipse = normalise(e);
  onChange();
}

// ---------------------------------------------------------------- pointer and keyboard

function eventToImage(ev) {
  const rect = el.canvas.getBoundingClientRect();
  const k = el.canvas.width / rect.width;
  return { x: (ev.clientX - rect.left) * k - 0.5, y: (ev.clientY - rect.top) * k - 0.5 };
}

// The handle at image point p, 'body' inside the ellipse, or null.
function hitTest(p) {
  if (!state.ellipse) return null;
  const tol = HIT_RADIUS_CSS * canvasScale();
  const h = handles(state.ellipse);
  let best = null, bestD = tol;
  for (const name of ['major1', 'major2', 'minor', 'center']) {
    const d = Math.hypot(h[name].x - p.x, h[name].y - p.y);
    if (d <= bestD) { best = name; bestD = d; }
  }
  if (best) return best;
  // Anywhere inside the ellipse moves it.
  const e = state.ellipse, c = Math.cos(e.angle), s = Math.sin(e.angle);
  const u = ((p.x - e.x) * c + (p.y - e.y) * s) / e.a, v = (-(p.x - e.x) * s + (p.y - e.y) * c) / e.b;
  return u * u + v * v <= 1 ? 'body' : null;
}

function applyDrag(p) {
  const e = state.ellipse, d = state.drag;
  if (d.handle === 'center' || d.handle === 'body') {
    e.x = p.x - d.dx;
    e.y = p.y - d.dy;
  } else if (d.handle === 'major1' || d.handle === 'major2') {
    const sign = d.handle === 'major1' ? 1 : -1;
    const vx = (p.x - e.x) * sign, vy = (p.y - e.y) * sign;
    e.a = Math.max(MIN_SEMI_AXIS, Math.hypot(vx, vy));
    e.angle = Math.atan2(vy, vx);
  } else if (d.handle === 'minor') {
    const proj = -(p.x - e.x) * Math.sin(e.angle) + (p.y - e.y) * Math.cos(e.angle);
    e.b = Math.max(MIN_SEMI_AXIS, Math.abs(proj));
  }
}

function pointerDown(ev) {
  if (!state.ellipse || ev.button !== 0) return;
  const p = eventToImage(ev);
  const handle = hitTest(p);
  if (!handle) return;
  ev.preventDefault();
  el.canvas.focus({ preventScroll: true });
  state.drag = { handle, pointerId: ev.pointerId, dx: p.x - state.ellipse.x, dy: p.y - state.ellipse.y };
  el.canvas.setPointerCapture(ev.pointerId);
  el.canvas.dataset.dragging = handle;
  draw();
}

function pointerMove(ev) {
  if (state.drag && ev.pointerId === state.drag.pointerId) {
    applyDrag(eventToImage(ev));
    onChange();
    return;
  }
  if (!state.ellipse) return;
  const over = hitTest(eventToImage(ev));
  const hover = over === 'body' ? 'center' : over;
  el.canvas.style.cursor = !over ? 'default' : over === 'center' || over === 'body' ? 'move' : 'grab';
  if (hover !== state.hover) {
    state.hover = hover;
    draw();
  }
}

function endDrag(ev) {
  if (!state.drag || ev.pointerId !== state.drag.pointerId) return;
  state.drag = null;
  delete el.canvas.dataset.dragging;
  state.ellipse = normalise(state.ellipse);
  onChange();
}

// Arrows move, A/Z major axis, S/X minor axis, R/E rotate; Shift = faster.
function keyDown(ev) {
  if (!state.ellipse || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const step = ev.shiftKey ? 10 : 1;
  const rot = ((ev.shiftKey ? 5 : 1) * Math.PI) / 180;
  const e = state.ellipse;
  switch (ev.key) {
    case 'ArrowLeft': e.x -= step; break;
    case 'ArrowRight': e.x += step; break;
    case 'ArrowUp': e.y -= step; break;
    case 'ArrowDown': e.y += step; break;
    case 'a': case 'A': e.a += step; break;
    case 'z': case 'Z': e.a = Math.max(MIN_SEMI_AXIS, e.a - step); break;
    case 's': case 'S': e.b += step; break;
    case 'x': case 'X': e.b = Math.max(MIN_SEMI_AXIS, e.b - step); break;
    case 'r': case 'R': e.angle += rot; break;
    case 'e': case 'E': e.angle -= rot; break;
    default: return;
  }
  ev.preventDefault();
  state.ellipse = normalise(e);
  onChange();
}

// changed: called after every change of the working ellipse made here (drag, keys, fields).
export function initEllipseEditor({ changed }) {
  onChange = changed;
  el.canvas.addEventListener('pointerdown', pointerDown);
  el.canvas.addEventListener('pointermove', pointerMove);
  el.canvas.addEventListener('pointerup', endDrag);
  el.canvas.addEventListener('pointercancel', endDrag);
  el.canvas.addEventListener('keydown', keyDown);
  for (const input of [el.ellCx, el.ellCy, el.ellA, el.ellB, el.ellAngle]) {
    input.addEventListener('change', () => fieldChanged(input));
  }
  window.addEventListener('resize', () => { if (state.ellipse) draw(); });
}
