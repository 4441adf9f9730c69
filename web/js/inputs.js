// Owns: the measure form's inputs as values: reading and checking the pixel size, known GA and
// pregnancy id (with the texts that explain the rules), the bearer token field, and the values the
// browser remembers between visits (pixel size: localStorage; token: sessionStorage, this tab only).

import { el } from './dom.js';
import { todayIso } from './format.js';

const STORAGE_PIXEL_SIZE = 'fetalhc.pixelSize';
const STORAGE_TOKEN = 'fetalhc.token';   // sessionStorage: this tab only

export const PREGNANCY_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
export const PIXEL_SIZE_RULE = 'Enter the pixel size in mm per pixel (greater than 0, at most 2).';
export const PREGNANCY_ID_RULE =
  'The pregnancy id must be 1 to 64 letters, digits, "_", "." or "-" (a pseudonymous id).';

// null when empty, NaN when not a number.
export function readNumber(input) {
  const raw = input.value.trim();
  if (raw === '') return null;
  const v = Number(raw);
  return Number.isFinite(v) ? v : NaN;
}

// The pixel size in mm, or null when missing or out of range.
export function pixelSizeValue() {
  const v = readNumber(el.pixelSize);
  return v !== null && v > 0 && v <= 2 ? v : null;
}

// The known GA in weeks, or null when missing or out of range.
export function gaWeeksValue() {
  const v = readNumber(el.gaWeeks);
  return v !== null && v > 0 && v < 45 ? v : null;
}

export function pregnancyIdValue() {
  return el.pregnancyId.value.trim();
}

export function rememberPixelSize(text) {
  localStorage.setItem(STORAGE_PIXEL_SIZE, text);
}

export function tokenValue() {
  return el.token.value.trim();
}

// After a 401: open the token settings and put the cursor in the token field.
export function revealToken() {
  el.tokenSettings.open = true;
  el.token.focus();
}

// Start-up values: the remembered pixel size and token, today's date.
export function initInputs() {
  const savedPixelSize = localStorage.getItem(STORAGE_PIXEL_SIZE);
  if (savedPixelSize && !el.pixelSize.value) el.pixelSize.value = savedPixelSize;
  el.examDate.value = todayIso();
  el.token.value = sessionStorage.getItem(STORAGE_TOKEN) || '';
  el.token.addEventListener('change', () => sessionStorage.setItem(STORAGE_TOKEN, el.token.value.trim()));
}
