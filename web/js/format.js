// Owns: turning numbers into the text the page shows (millimetres, weeks+days, GA results, dates).
// No DOM.

export const DASH = '\u2013';

export const mm = (v) => (Number.isFinite(v) ? v.toFixed(1) + ' mm' : DASH);

export function formatWeeks(w) {
  const days = Math.round(w * 7);
  return `${Math.floor(days / 7)}w${days % 7}d`;
}

// A GA object of the API ({weeks, text, in_range, note}) as {text, note} for an output.
export function formatGa(ga) {
  if (!ga) return { text: DASH, note: '' };
  if (ga.in_range && Number.isFinite(ga.weeks)) {
    const label = ga.text && ga.text !== 'n/a' ? ga.text : formatWeeks(ga.weeks);
    return { text: `${label} (${ga.weeks.toFixed(1)} weeks)`, note: '' };
  }
  return { text: 'n/a', note: ga.note || 'outside the formula\u2019s range' };
}

// Today in the browser's time zone as YYYY-MM-DD (the value of an <input type="date">).
export function todayIso() {
  const d = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}
