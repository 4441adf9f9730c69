// fetalhc web page: measure HC on an uploaded image, correct the ellipse by hand, accept the exam,
// and follow a pregnancy on the INTERGROWTH-21st growth chart. Plain browser JavaScript, no build step;
// everything (including Chart.js) is served by `fetalhc serve`.
//
// Ellipse convention (same as the API and the CLI): centre (x, y) in image pixels with the origin at
// the centre of the top-left pixel, x right, y down; semi-axes a >= b; angle in radians in [0, pi)
// from +x towards +y.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);

  const STORAGE_PIXEL_SIZE = 'fetalhc.pixelSize';
  const STORAGE_PREGNANCY = 'fetalhc.lastPregnancyId';
  const STORAGE_TOKEN = 'fetalhc.token';   // sessionStorage: this tab only
  const PREGNANCY_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const PIXEL_SIZE_RULE = 'Enter the pixel size in mm per pixel (greater than 0, at most 2).';
  const PREGNANCY_ID_RULE = 'The pregnancy id must be 1 to 64 letters, digits, "_", "." or "-" (a pseudonymous id).';
  const PERIMETER_DEBOUNCE_MS = 250;
  const HANDLE_RADIUS_CSS = 7;     // drawn handle radius, CSS pixels
  const HIT_RADIUS_CSS = 14;       // pointer tolerance around a handle, CSS pixels
  const MIN_SEMI_AXIS = 2;         // image pixels

  const el = {
    form: $('measure-form'), file: $('file'), drop: $('drop-zone'), fileName: $('file-name'),
    pixelSize: $('pixel-size'), gaWeeks: $('ga-weeks'), pregnancyId: $('pregnancy-id'), examDate: $('exam-date'),
    measure: $('measure'), canvas: $('canvas'), canvasEmpty: $('canvas-empty'),
    ellFields: $('ellipse-fields'), ellCx: $('ell-cx'), ellCy: $('ell-cy'), ellA: $('ell-a'), ellB: $('ell-b'),
    ellAngle: $('ell-angle'),
    quality: $('quality'), corrected: $('corrected-flag'), reasons: $('reasons'),
    hc: $('hc'), bpd: $('bpd'), ofd: $('ofd'), ci: $('ci'), gaHadlock: $('ga-hadlock'),
    gaIntergrowth: $('ga-intergrowth'), centile: $('centile'), timings: $('timings'), results: $('results'),
    reset: $('reset-ellipse'), accept: $('accept'), acceptStatus: $('accept-status'),
    openPregnancy: $('open-pregnancy'),
    message: $('message'), messageText: $('message-text'), messageClose: $('message-close'),
    serverStatus: $('server-status'), token: $('token'), tokenSettings: $('token-settings'),
    tabMeasure: $('tab-measure'), tabPregnancy: $('tab-pregnancy'),
    viewMeasure: $('view-measure'), viewPregnancy: $('view-pregnancy'),
    pregnancyForm: $('pregnancy-form'), viewPregnancyId: $('view-pregnancy-id'), exportCsv: $('export-csv'),
    chart: $('chart'), chartNote: $('chart-note'), examsBody: $('exams-body'),
  };

  const state = {
    image: null,          // HTMLImageElement of the chosen file
    imageUrl: null,       // object URL of the chosen file
    measurement: null,    // last POST /v1/measure response
    autoEllipse: null,    // ellipse found by the server {x, y, a, b, angle}
    ellipse: null,        // working ellipse (may be un-normalised while dragging)
    drag: null,           // {handle, pointerId, dx, dy}
    hover: null,          // handle under the pointer
    perimeterTimer: 0,
    perimeterSeq: 0,
    measureSeq: 0,        // bumps on every new file or measurement; stale responses are dropped
    accepted: false,
    growthCurve: null,
    chart: null,
  };

  // ---------------------------------------------------------------- geometry

  // Ramanujan's second approximation of the ellipse perimeter.
  function perimeter(a, b) {
    const h = ((a - b) / (a + b)) ** 2;
    return Math.PI * (a + b) * (1 + (3 * h) / (10 + Math.sqrt(4 - 3 * h)));
  }

  // a >= b and angle in [0, pi).
  function normalise(e) {
    let { x, y, a, b, angle } = e;
    a = Math.abs(a);
    b = Math.abs(b);
    if (b > a) {
      [a, b] = [b, a];
      angle += Math.PI / 2;
    }
    angle %= Math.PI;
    if (angle < 0) angle += Math.PI;
    if (angle >= Math.PI) angle -= Math.PI;
    return { x, y, a, b, angle };
  }

  function fromApi(p) {
    return { x: p.center_x, y: p.center_y, a: p.semi_axis_a, b: p.semi_axis_b, angle: p.angle_rad };
  }

  function toApi(e) {
    const n = normalise(e);
    return { center_x: n.x, center_y: n.y, semi_axis_a: n.a, semi_axis_b: n.b, angle_rad: n.angle };
  }

  function sameEllipse(p, q) {
    const m = normalise(p), n = normalise(q);
    // Near-circles: the angle does not matter.
    let dAngle = Math.abs(m.angle - n.angle);
    dAngle = Math.min(dAngle, Math.PI - dAngle);
    const angleMatters = Math.abs(m.a - m.b) > 0.5;
    return Math.abs(m.x - n.x) < 0.05 && Math.abs(m.y - n.y) < 0.05 && Math.abs(m.a - n.a) < 0.05 &&
      Math.abs(m.b - n.b) < 0.05 && (!angleMatters || dAngle < 1e-3);
  }

  // Handle positions in image pixels.
  function handles(e) {
    const c = Math.cos(e.angle), s = Math.sin(e.angle);
    return {
      center: { x: e.x, y: e.y },
      major1: { x: e.x + e.a * c, y: e.y + e.a * s },
      major2: { x: e.x - e.a * c, y: e.y - e.a * s },
      minor: { x: e.x - e.b * s, y: e.y + e.b * c },
    };
  }

  // ---------------------------------------------------------------- messages and formatting

  function showMessage(text, kind = 'error') {
    el.messageText.textContent = text;
    el.message.className = 'message message-' + kind;
    el.message.hidden = false;
  }

  // Shows why an action cannot go on and puts the cursor in the field to fix: `return refuse(...)`.
  function refuse(input, message) {
    showMessage(message);
    input.focus();
    return null;
  }

  function clearMessage() {
    el.message.hidden = true;
    el.messageText.textContent = '';
  }

  const mm = (v) => (Number.isFinite(v) ? v.toFixed(1) + ' mm' : '\u2013');

  function formatWeeks(w) {
    const days = Math.round(w * 7);
    return `${Math.floor(days / 7)}w${days % 7}d`;
  }

  function formatGa(ga) {
    if (!ga) return { text: '\u2013', note: '' };
    if (ga.in_range && Number.isFinite(ga.weeks)) {
      const label = ga.text && ga.text !== 'n/a' ? ga.text : formatWeeks(ga.weeks);
      return { text: `${label} (${ga.weeks.toFixed(1)} weeks)`, note: '' };
    }
    return { text: 'n/a', note: ga.note || 'outside the formula\u2019s range' };
  }

  function setOutput(node, text, note, warn) {
    node.textContent = text;
    node.title = note || '';
    node.classList.toggle('warn', !!warn);
    if (note) {
      const small = document.createElement('small');
      small.className = 'note';
      small.textContent = ' ' + note;
      node.appendChild(small);
    }
  }

  function readNumber(input) {
    const raw = input.value.trim();
    if (raw === '') return null;
    const v = Number(raw);
    return Number.isFinite(v) ? v : NaN;
  }

  function pixelSizeValue() {
    const v = readNumber(el.pixelSize);
    return v !== null && v > 0 && v <= 2 ? v : null;
  }

  function gaWeeksValue() {
    const v = readNumber(el.gaWeeks);
    return v !== null && v > 0 && v < 45 ? v : null;
  }

  function todayIso() {
    const d = new Date();
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }

  // ---------------------------------------------------------------- HTTP

  async function api(path, options = {}) {
    let res;
    const token = el.token.value.trim();
    if (token && options.method && options.method !== 'GET') {
      options = { ...options, headers: { ...(options.headers || {}), Authorization: 'Bearer ' + token } };
    }
    try {
      res = await fetch(path, options);
    } catch (err) {
      throw new Error('Cannot reach the fetalhc server (' + err.message + ').');
    }
    const type = res.headers.get('content-type') || '';
    let body = null;
    if (type.includes('application/json')) {
      try { body = await res.json(); } catch (_) { body = null; }
    }
    if (!res.ok) {
      const detail = body && body.error ? body.error : `${res.status} ${res.statusText}`;
      const err = new Error(detail);
      err.status = res.status;
      if (res.status === 401) {
        el.tokenSettings.open = true;
        el.token.focus();
      }
      throw err;
    }
    return body;
  }

  async function checkHealth() {
    try {
      const res = await fetch('/health');
      if (res.ok) {
        el.serverStatus.textContent = 'server ready';
        el.serverStatus.className = 'server-status ready';
        return;
      }
      el.serverStatus.textContent = 'loading the model\u2026';
      el.serverStatus.className = 'server-status busy';
    } catch (_) {
      el.serverStatus.textContent = 'server unreachable';
      el.serverStatus.className = 'server-status down';
    }
    setTimeout(checkHealth, 2000);
  }

  // ---------------------------------------------------------------- drawing

  // Image pixels per CSS pixel of the displayed canvas.
  function canvasScale() {
    const rect = el.canvas.getBoundingClientRect();
    return rect.width > 0 ? el.canvas.width / rect.width : 1;
  }

  function draw() {
    const ctx = el.canvas.getContext('2d');
    const cv = el.canvas;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cv.width, cv.height);
    if (!state.image) return;
    ctx.drawImage(state.image, 0, 0);
    if (!state.ellipse) {
      cv.dataset.drawn = '0';
      return;
    }
    const k = canvasScale();
    // Image pixel (0, 0) is centred at canvas (0.5, 0.5).
    ctx.translate(0.5, 0.5);

    if (state.autoEllipse && !sameEllipse(state.autoEllipse, state.ellipse)) {
      const o = state.autoEllipse;
      ctx.save();
      ctx.setLineDash([6 * k, 6 * k]);
      ctx.lineWidth = 1.5 * k;
      ctx.strokeStyle = 'rgba(200, 200, 200, 0.8)';
      ctx.beginPath();
      ctx.ellipse(o.x, o.y, Math.abs(o.a), Math.abs(o.b), o.angle, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.restore();
    }

    const e = state.ellipse;
    const h = handles(e);
    ctx.lineWidth = 2.5 * k;
    ctx.strokeStyle = '#ffd400';
    ctx.beginPath();
    ctx.ellipse(e.x, e.y, Math.abs(e.a), Math.abs(e.b), e.angle, 0, 2 * Math.PI);
    ctx.stroke();

    ctx.lineWidth = 1.5 * k;
    ctx.setLineDash([8 * k, 5 * k]);
    ctx.strokeStyle = '#38c6ff';
    ctx.beginPath();
    ctx.moveTo(h.major2.x, h.major2.y);
    ctx.lineTo(h.major1.x, h.major1.y);
    ctx.stroke();
    ctx.strokeStyle = '#7dff8a';
    ctx.beginPath();
    ctx.moveTo(2 * e.x - h.minor.x, 2 * e.y - h.minor.y);
    ctx.lineTo(h.minor.x, h.minor.y);
    ctx.stroke();
    ctx.setLineDash([]);

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
    ctx.setTransform(1, 0, 0, 1, 0, 0);

    // State for tests and tools: the ellipse as the API has it, and the handle positions (image px).
    cv.dataset.ellipse = JSON.stringify(toApi(e));
    cv.dataset.handles = JSON.stringify(h);
    cv.dataset.drawn = '1';
  }

  // ---------------------------------------------------------------- results panel

  function showQuality(m) {
    el.quality.className = 'badge';
    el.reasons.innerHTML = '';
    if (!m) {
      el.quality.textContent = 'no measurement';
      el.quality.classList.add('badge-none');
      return;
    }
    el.quality.textContent = m.quality === 'ok' ? 'quality ok' : 'review';
    el.quality.classList.add(m.quality === 'ok' ? 'badge-ok' : 'badge-review');
    el.quality.dataset.quality = m.quality;
    for (const reason of m.reasons || []) {
      const li = document.createElement('li');
      li.textContent = reason;
      el.reasons.appendChild(li);
    }
  }

  // Sizes computed here, immediately, from the working ellipse and the pixel size.
  function showLocalNumbers() {
    const ps = pixelSizeValue();
    if (!state.ellipse || ps === null) {
      for (const n of [el.hc, el.bpd, el.ofd, el.ci]) n.textContent = '\u2013';
      return;
    }
    const e = normalise(state.ellipse);
    const hc = perimeter(e.a, e.b) * ps;
    el.hc.textContent = mm(hc);
    el.hc.dataset.value = hc.toFixed(3);
    el.bpd.textContent = mm(2 * e.b * ps);
    el.ofd.textContent = mm(2 * e.a * ps);
    el.ci.textContent = (100 * e.b / e.a).toFixed(1);
    const corrected = isCorrected();
    el.corrected.hidden = !corrected;
    el.reset.disabled = !corrected;
  }

  // GA and centile as computed by the server (measure or perimeter response).
  function showServerNumbers(r) {
    const h = formatGa(r.ga_hadlock), ig = formatGa(r.ga_intergrowth);
    setOutput(el.gaHadlock, h.text, h.note);
    setOutput(el.gaIntergrowth, ig.text, ig.note);
    const c = r.centile;
    if (!c) {
      setOutput(el.centile, 'n/a', 'enter the known GA for the centile');
    } else if (!c.in_range || !Number.isFinite(c.centile) || !Number.isFinite(c.z) || !Number.isFinite(c.median_mm)) {
      setOutput(el.centile, 'n/a', c.note || 'GA outside 14\u201340 weeks');
    } else {
      let text = `${c.centile.toFixed(1)} (z ${c.z >= 0 ? '+' : ''}${c.z.toFixed(2)}; median ${c.median_mm.toFixed(1)} mm)`;
      let flag = '';
      if (c.below_3rd) flag = 'below the 3rd centile';
      if (c.above_97th) flag = 'above the 97th centile';
      setOutput(el.centile, text, flag, !!flag);
    }
    for (const n of [el.gaHadlock, el.gaIntergrowth, el.centile]) n.classList.remove('pending');
  }

  function markServerNumbersPending() {
    for (const n of [el.gaHadlock, el.gaIntergrowth, el.centile]) n.classList.add('pending');
  }

  function syncEllipseFields() {
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

  function isCorrected() {
    return !!(state.autoEllipse && state.ellipse && !sameEllipse(state.autoEllipse, state.ellipse));
  }

  // Called after every change of the working ellipse (drag, keys, fields) or of the pixel size / GA.
  function ellipseChanged() {
    draw();
    showLocalNumbers();
    syncEllipseFields();
    changedSinceAccept();
    schedulePerimeter();
  }

  function changedSinceAccept() {
    if (!state.measurement) return;
    el.accept.disabled = false;
    if (state.accepted) {
      state.accepted = false;
      el.openPregnancy.hidden = true;
      el.acceptStatus.textContent = 'Changed since it was accepted: accept again to save this version.';
    }
  }

  function schedulePerimeter() {
    if (!state.ellipse) return;
    markServerNumbersPending();
    clearTimeout(state.perimeterTimer);
    state.perimeterTimer = setTimeout(refreshFromServer, PERIMETER_DEBOUNCE_MS);
  }

  async function refreshFromServer() {
    const ps = pixelSizeValue();
    if (!state.ellipse || ps === null) return;
    const seq = ++state.perimeterSeq;
    const body = { ellipse_px: toApi(state.ellipse), pixel_size_mm: ps };
    const ga = gaWeeksValue();
    if (ga !== null) body.ga_weeks = ga;
    try {
      const r = await api('/v1/perimeter', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      if (seq !== state.perimeterSeq) return;  // a newer request is on its way
      showServerNumbers(r);
      // The server is authoritative for the sizes too; they agree with the local ones.
      if (Number.isFinite(r.hc_mm)) {
        el.hc.textContent = mm(r.hc_mm);
        el.hc.dataset.value = r.hc_mm.toFixed(3);
      }
      el.results.dataset.updated = String(seq);
    } catch (err) {
      if (seq === state.perimeterSeq) showMessage('Could not update GA and centile: ' + err.message);
    }
  }
  function resetResults() {
    state.measurement = null;
    state.autoEllipse = null;
    state.ellipse = null;
    state.accepted = false;
    showQuality(null);
    for (const n of [el.hc, el.bpd, el.ofd, el.ci, el.gaHadlock, el.gaIntergrowth, el.centile]) {
      n.textContent = '\u2013';
      n.classList.remove('pending', 'warn');
    }
    delete el.hc.dataset.value;
    el.corrected.hidden = true;
    el.reset.disabled = true;
    el.accept.disabled = true;
    el.ellFields.disabled = true;
    el.timings.textContent = '';
    el.acceptStatus.textContent = '';
    el.openPregnancy.hidden = true;
    delete el.canvas.dataset.ellipse;
    el.canvas.dataset.drawn = '0';
  }

  // ---------------------------------------------------------------- image choice and measuring

  function chooseFile(file) {
    clearMessage();
    state.measureSeq++;
    resetResults();
    if (!file) return;
    const okType = /^image\/(png|jpeg)$/.test(file.type) || /\.(png|jpe?g)$/i.test(file.name);
    if (!okType) {
      showMessage(`"${file.name}" is not a PNG or JPEG image.`);
      return;
    }
    el.fileName.textContent = `${file.name} (${Math.round(file.size / 1024)} KiB)`;
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      state.image = img;
      el.canvas.width = img.naturalWidth;
      el.canvas.height = img.naturalHeight;
      el.canvasEmpty.hidden = true;
      draw();
    };
    img.onerror = () => showMessage(`The browser cannot display "${file.name}".`);
    img.src = state.imageUrl;
    if (pixelSizeValue() === null) el.pixelSize.focus();
  }

  el.file.addEventListener('change', () => chooseFile(el.file.files[0]));

  el.drop.addEventListener('dragover', (ev) => {
    ev.preventDefault();
    el.drop.classList.add('dragging');
  });
  el.drop.addEventListener('dragleave', () => el.drop.classList.remove('dragging'));
  el.drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    el.drop.classList.remove('dragging');
    const files = ev.dataTransfer && ev.dataTransfer.files;
    if (!files || !files.length) return;
    el.file.files = files;
    chooseFile(files[0]);
  });
  // The label opens the file dialog on click; make Enter/Space work when it has focus too.
  el.drop.tabIndex = 0;
  el.drop.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      el.file.click();
    }
  });

  el.form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearMessage();
    const file = el.file.files[0];
    if (!file) return refuse(el.drop, 'Choose an image first (PNG or JPEG).');
    const ps = pixelSizeValue();
    if (ps === null) return refuse(el.pixelSize, PIXEL_SIZE_RULE);
    const ga = readNumber(el.gaWeeks);
    if (ga !== null && !(ga > 0 && ga < 45))
      return refuse(el.gaWeeks, 'The known GA must be in weeks, between 0 and 45 (e.g. 22.4), or left empty.');
    localStorage.setItem(STORAGE_PIXEL_SIZE, String(ps));

    const fd = new FormData();
    fd.append('image', file, file.name);
    fd.append('pixel_size_mm', String(ps));
    if (ga !== null) fd.append('ga_weeks', String(ga));
    const pid = el.pregnancyId.value.trim();
    if (pid && !PREGNANCY_ID_RE.test(pid)) return refuse(el.pregnancyId, PREGNANCY_ID_RULE);
    if (pid) fd.append('pregnancy_id', pid);
    if (el.examDate.value) fd.append('exam_date', el.examDate.value);

    resetResults();
    draw();
    const seq = ++state.measureSeq;
    el.measure.disabled = true;
    el.measure.textContent = 'Measuring\u2026';
    el.measure.setAttribute('aria-busy', 'true');
    try {
      const m = await api('/v1/measure', { method: 'POST', body: fd });
      if (seq !== state.measureSeq) return;  // another image was chosen meanwhile
      state.measurement = m;
      state.autoEllipse = normalise(fromApi(m.ellipse_px));
      state.ellipse = { ...state.autoEllipse };
      if (state.image && (state.image.naturalWidth !== m.image_width || state.image.naturalHeight !== m.image_height)) {
        showMessage(`The server read the image as ${m.image_width}x${m.image_height} pixels but the browser shows ` +
          `${state.image.naturalWidth}x${state.image.naturalHeight}; the overlay may be misplaced.`, 'warning');
      }
      showQuality(m);
      showServerNumbers(m);
      el.ellFields.disabled = false;
      el.accept.disabled = false;
      if (m.timings_ms && Number.isFinite(m.timings_ms.total)) {
        el.timings.textContent = `Measured in ${Math.round(m.timings_ms.total)} ms.`;
      }
      draw();
      showLocalNumbers();
      syncEllipseFields();
      if (Number.isFinite(m.hc_mm)) {
        el.hc.textContent = mm(m.hc_mm);
        el.hc.dataset.value = m.hc_mm.toFixed(3);
      }
    } catch (err) {
      if (seq === state.measureSeq) showMessage('Measurement failed: ' + err.message);
    } finally {
      el.measure.disabled = false;
      el.measure.textContent = 'Measure';
      el.measure.removeAttribute('aria-busy');
    }
  });

  el.pixelSize.addEventListener('input', () => {
    if (pixelSizeValue() !== null) {
      localStorage.setItem(STORAGE_PIXEL_SIZE, el.pixelSize.value.trim());
      if (state.ellipse) ellipseChanged();
    }
  });
  el.gaWeeks.addEventListener('input', () => {
    if (!state.ellipse) return;
    changedSinceAccept();
    schedulePerimeter();
  });

  el.reset.addEventListener('click', () => {
    if (!state.autoEllipse) return;
    state.ellipse = { ...state.autoEllipse };
    ellipseChanged();
  });

  // ---------------------------------------------------------------- dragging the handles

  function eventToImage(ev) {
    const rect = el.canvas.getBoundingClientRect();
    const k = el.canvas.width / rect.width;
    return { x: (ev.clientX - rect.left) * k - 0.5, y: (ev.clientY - rect.top) * k - 0.5 };
  }

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

  el.canvas.addEventListener('pointerdown', (ev) => {
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
  });

  el.canvas.addEventListener('pointermove', (ev) => {
    if (state.drag && ev.pointerId === state.drag.pointerId) {
      applyDrag(eventToImage(ev));
      ellipseChanged();
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
  });

  function endDrag(ev) {
    if (!state.drag || ev.pointerId !== state.drag.pointerId) return;
    state.drag = null;
    delete el.canvas.dataset.dragging;
    state.ellipse = normalise(state.ellipse);
    ellipseChanged();
  }
  el.canvas.addEventListener('pointerup', endDrag);
  el.canvas.addEventListener('pointercancel', endDrag);

  // Keyboard correction on the focused image.
  el.canvas.addEventListener('keydown', (ev) => {
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
    ellipseChanged();
  });

  // Exact values typed into the ellipse fields.
  for (const input of [el.ellCx, el.ellCy, el.ellA, el.ellB, el.ellAngle]) {
    input.addEventListener('change', () => {
      if (!state.ellipse) return;
      const v = readNumber(input);
      if (v === null || Number.isNaN(v)) { syncEllipseFields(); return; }
      const e = state.ellipse;
      if (input === el.ellCx) e.x = v;
      else if (input === el.ellCy) e.y = v;
      else if (input === el.ellA) e.a = Math.max(MIN_SEMI_AXIS, v);
      else if (input === el.ellB) e.b = Math.max(MIN_SEMI_AXIS, v);
      else e.angle = (v * Math.PI) / 180;
      state.ellipse = normalise(e);
      ellipseChanged();
    });
  }

  // ---------------------------------------------------------------- accepting the exam

  el.accept.addEventListener('click', async () => {
    clearMessage();
    const m = state.measurement;
    if (!m || !state.ellipse) return;
    const pid = el.pregnancyId.value.trim();
    if (!pid) return refuse(el.pregnancyId, 'Enter the pregnancy id to save this exam.');
    if (!PREGNANCY_ID_RE.test(pid)) return refuse(el.pregnancyId, PREGNANCY_ID_RULE);
    if (!/^\d{4}-\d{2}-\d{2}$/.test(el.examDate.value))
      return refuse(el.examDate, 'Enter the exam date to save this exam.');
    const ps = pixelSizeValue();
    if (ps === null) return refuse(el.pixelSize, PIXEL_SIZE_RULE);
    const corrected = isCorrected();
    const body = {
      pregnancy_id: pid, exam_date: el.examDate.value, image_sha256: m.image_sha256, pixel_size_mm: ps,
      ellipse_px: toApi(state.ellipse), corrected, quality: m.quality, reasons: m.reasons || [],
    };
    const ga = gaWeeksValue();
    if (ga !== null) body.ga_weeks = ga;
    el.accept.disabled = true;
    let saved = false;
    try {
      const exam = await api('/v1/exams', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      saved = true;
      state.accepted = true;
      el.openPregnancy.hidden = false;
      localStorage.setItem(STORAGE_PREGNANCY, pid);
      el.viewPregnancyId.value = pid;
      const hc = exam && Number.isFinite(exam.hc_mm) ? ` HC ${exam.hc_mm.toFixed(1)} mm,` : '';
      el.acceptStatus.textContent = `Saved for pregnancy ${pid}:${hc} ${corrected ? 'corrected by hand' : 'automatic ellipse'}.`;
      el.acceptStatus.dataset.examId = exam && exam.id !== undefined ? String(exam.id) : '';
      showMessage(`Exam saved for pregnancy ${pid}${corrected ? ' (corrected)' : ''}. See the growth chart in the Pregnancy tab.`, 'success');
    } catch (err) {
      showMessage('Could not save the exam: ' + err.message);
    } finally {
      el.accept.disabled = saved;
    }
  });

  // ---------------------------------------------------------------- pregnancy view

  function selectTab(which, focus) {
    const measure = which === 'measure';
    el.tabMeasure.setAttribute('aria-selected', String(measure));
    el.tabPregnancy.setAttribute('aria-selected', String(!measure));
    el.tabMeasure.tabIndex = measure ? 0 : -1;
    el.tabPregnancy.tabIndex = measure ? -1 : 0;
    el.viewMeasure.hidden = !measure;
    el.viewPregnancy.hidden = measure;
    if (focus) (measure ? el.tabMeasure : el.tabPregnancy).focus();
    if (!measure) {
      if (!el.viewPregnancyId.value.trim()) {
        el.viewPregnancyId.value = el.pregnancyId.value.trim() || localStorage.getItem(STORAGE_PREGNANCY) || '';
      }
      const pid = el.viewPregnancyId.value.trim();
      if (PREGNANCY_ID_RE.test(pid)) loadPregnancy(pid);
      else el.viewPregnancyId.focus();
    }
  }

  el.tabMeasure.addEventListener('click', () => selectTab('measure'));
  el.tabPregnancy.addEventListener('click', () => selectTab('pregnancy'));
  el.openPregnancy.addEventListener('click', () => selectTab('pregnancy', true));
  for (const tab of [el.tabMeasure, el.tabPregnancy]) {
    tab.addEventListener('keydown', (ev) => {
      if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft' || ev.key === 'Home' || ev.key === 'End') {
        ev.preventDefault();
        selectTab(tab === el.tabMeasure ? 'pregnancy' : 'measure', true);
      }
    });
  }

  el.pregnancyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const pid = el.viewPregnancyId.value.trim();
    if (!PREGNANCY_ID_RE.test(pid)) {
      showMessage(pid ? PREGNANCY_ID_RULE : 'Enter a pregnancy id.');
      el.viewPregnancyId.focus();
      return;
    }
    loadPregnancy(pid);
  });

  function examGa(x) {
    if (Number.isFinite(x.ga_weeks_given)) return x.ga_weeks_given;
    if (Number.isFinite(x.ga_hadlock_weeks)) return x.ga_hadlock_weeks;
    return null;
  }

  function fillTable(exams) {
    el.examsBody.innerHTML = '';
    if (!exams.length) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = 8;
      td.className = 'hint';
      td.textContent = 'No accepted exams.';
      tr.appendChild(td);
      el.examsBody.appendChild(tr);
      return;
    }
    const fmt = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '\u2013');
    for (const x of exams) {
      const tr = document.createElement('tr');
      const ga = examGa(x);
      const gaText = ga === null ? 'n/a' : `${fmt(ga)}${Number.isFinite(x.ga_weeks_given) ? ' (given)' : ' (Hadlock)'}`;
      const cells = [x.exam_date, fmt(x.hc_mm), fmt(x.bpd_mm), fmt(x.ofd_mm), gaText, fmt(x.centile),
        x.quality || '\u2013', x.corrected ? 'corrected' : 'automatic'];
      cells.forEach((text, i) => {
        const td = document.createElement('td');
        td.textContent = text;
        if (i === 6) td.className = x.quality === 'ok' ? 'q-ok' : x.quality === 'review' ? 'q-review' : '';
        if (i === 7 && x.corrected) td.className = 'corrected';
        tr.appendChild(td);
      });
      el.examsBody.appendChild(tr);
    }
  }

  async function loadGrowthCurve() {
    if (!state.growthCurve) state.growthCurve = await api('/v1/growth-curve');
    return state.growthCurve;
  }

  function drawChart(curve, exams) {
    if (typeof window.Chart !== 'function') throw new Error('the charting library did not load');
    const line = (key) => curve.ga_weeks.map((g, i) => ({ x: g, y: curve[key][i] }));
    const points = [], correctedPoints = [];
    let unplotted = 0;
    for (const x of exams) {
      const ga = examGa(x);
      if (ga === null || !Number.isFinite(x.hc_mm)) { unplotted++; continue; }
      (x.corrected ? correctedPoints : points).push({ x: ga, y: x.hc_mm, date: x.exam_date });
    }
    const curveStyle = (label, color, dash) => ({
      type: 'line', label, borderColor: color, backgroundColor: color, borderWidth: 2, borderDash: dash,
      pointRadius: 0, pointHitRadius: 0, pointStyle: 'line', fill: false, tension: 0.2,
    });
    const datasets = [
      { ...curveStyle('97th centile', '#c0392b', [6, 4]), data: line('p97') },
      { ...curveStyle('50th centile', '#2c3e50', []), data: line('p50') },
      { ...curveStyle('3rd centile', '#c0392b', [6, 4]), data: line('p3') },
      { type: 'scatter', label: 'Exam (automatic)', data: points, backgroundColor: '#1f77b4', borderColor: '#0b3d62',
        pointRadius: 6, pointHoverRadius: 8, pointStyle: 'circle' },
      { type: 'scatter', label: 'Exam (corrected)', data: correctedPoints, backgroundColor: '#ff9f1c',
        borderColor: '#8a4f00', pointRadius: 7, pointHoverRadius: 9, pointStyle: 'triangle' },
    ];
    if (state.chart) state.chart.destroy();
    state.chart = new window.Chart(el.chart, {
      type: 'line',
      data: { datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: 'nearest', intersect: true },
        scales: {
          x: { type: 'linear', min: 14, max: 40, title: { display: true, text: 'Gestational age (weeks)' },
            ticks: { stepSize: 2 } },
          y: { title: { display: true, text: 'Head circumference (mm)' } },
        },
        plugins: {
          legend: { position: 'bottom', labels: { usePointStyle: true } },
          tooltip: {
            callbacks: {
              label: (ctx) => {
                const r = ctx.raw;
                return r.date ? `${r.date}: HC ${r.y.toFixed(1)} mm at ${r.x.toFixed(1)} weeks`
                  : `${ctx.dataset.label}: ${r.y.toFixed(1)} mm at ${r.x.toFixed(1)} weeks`;
              },
            },
          },
        },
      },
    });
    const n = points.length + correctedPoints.length;
    el.chart.dataset.points = String(n);
    el.chart.dataset.drawn = '1';
    el.chartNote.textContent = unplotted
      ? `${unplotted} exam(s) not on the chart: no GA given and HC outside the Hadlock range.`
      : `${n} exam(s) plotted. GA is the given GA when entered, else Hadlock from HC.`;
  }

  async function loadPregnancy(pid) {
    clearMessage();
    el.chart.dataset.loading = '1';
    el.exportCsv.href = `/v1/pregnancies/${encodeURIComponent(pid)}/export.csv`;
    el.exportCsv.setAttribute('download', `pregnancy_${pid.replace(/[^A-Za-z0-9_.-]/g, '_')}.csv`);
    el.exportCsv.removeAttribute('aria-disabled');
    let exams = [];
    try {
      const [curve, preg] = await Promise.all([
        loadGrowthCurve(),
        api(`/v1/pregnancies/${encodeURIComponent(pid)}`).catch((err) => {
          if (err.status === 404) return null;
          throw err;
        }),
      ]);
      if (preg === null) {
        showMessage(`No accepted exams for pregnancy "${pid}".`, 'warning');
        el.exportCsv.setAttribute('aria-disabled', 'true');
        el.exportCsv.removeAttribute('href');
      } else {
        exams = (preg.exams || []).slice().sort((p, q) => String(p.exam_date).localeCompare(String(q.exam_date)));
      }
      fillTable(exams);
      drawChart(curve, exams);
    } catch (err) {
      showMessage('Could not show the pregnancy: ' + err.message);
    } finally {
      delete el.chart.dataset.loading;
    }
  }

  el.exportCsv.addEventListener('click', (ev) => {
    if (el.exportCsv.getAttribute('aria-disabled') === 'true') {
      ev.preventDefault();
      showMessage('Show a pregnancy first.');
    }
  });

  el.messageClose.addEventListener('click', clearMessage);

  // ---------------------------------------------------------------- start-up

  const savedPixelSize = localStorage.getItem(STORAGE_PIXEL_SIZE);
  if (savedPixelSize && !el.pixelSize.value) el.pixelSize.value = savedPixelSize;
  el.examDate.value = todayIso();
  el.token.value = sessionStorage.getItem(STORAGE_TOKEN) || '';
  el.token.addEventListener('change', () => sessionStorage.setItem(STORAGE_TOKEN, el.token.value.trim()));
  el.viewPregnancyId.value = localStorage.getItem(STORAGE_PREGNANCY) || '';
  window.addEventListener('resize', () => { if (state.ellipse) draw(); });
  document.body.dataset.ready = '1';
  checkHealth();
})();
