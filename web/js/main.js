// fetalhc web page, entry module: measure HC on an uploaded image, correct the ellipse by hand,
// accept the exam, and follow a pregnancy on the INTERGROWTH-21st growth chart. Plain browser ES
// modules, no build step; everything (including Chart.js) is served by `fetalhc serve` under /static/.
//
// Owns: wiring the modules together at start-up and the server status line in the top bar.
//   api.js             every request to the server, error parsing
//   ellipse-editor.js  the canvas: image, ellipse, handles, keyboard, exact-value fields
//   results.js         the measurement panel's numbers, GA, centile, quality
//   measure-view.js    image choice, measuring, accepting the exam
//   pregnancy-view.js  exam table, growth chart, CSV link
//   tabs.js, inputs.js, messages.js, dom.js, geometry.js, format.js: shared pieces

import { configureApi, healthReady, whoAmI } from './api.js';
import { el } from './dom.js';
import { initEllipseEditor } from './ellipse-editor.js';
import { initInputs, onTokenChange, revealToken, tokenValue } from './inputs.js';
import { ellipseChanged, initMeasureView } from './measure-view.js';
import { initMessages } from './messages.js';
import { initPregnancyView, showPregnancyView } from './pregnancy-view.js';
import { initTabs, selectTab } from './tabs.js';

const HEALTH_RETRY_MS = 2000;

function setServerStatus(text, kind) {
  el.serverStatus.textContent = text;
  el.serverStatus.className = 'server-status ' + kind;
}

// Polls GET /health until the model is ready.
async function checkHealth() {
  try {
    if (await healthReady()) {
      setServerStatus('server ready', 'ready');
      return;
    }
    setServerStatus('loading the model\u2026', 'busy');
  } catch (_) {
    setServerStatus('server unreachable', 'down');
  }
  setTimeout(checkHealth, HEALTH_RETRY_MS);
}

// Who the token in use belongs to, in the header ("" on a server without users or tokens).
async function showSignedIn() {
  try {
    const me = await whoAmI();
    el.signedIn.textContent = me && me.user ? `Signed in as ${me.user} (${me.role})` : '';
  } catch (_) {
    el.signedIn.textContent = tokenValue() ? 'Token not accepted' : '';
  }
}

configureApi({ token: tokenValue, unauthorized: revealToken });
initMessages();
initInputs();
initEllipseEditor({ changed: ellipseChanged });
initMeasureView();
initPregnancyView();
initTabs({ pregnancyShown: showPregnancyView });
el.openPregnancy.addEventListener('click', () => selectTab('pregnancy', true));
document.body.dataset.ready = '1';
checkHealth();
onTokenChange(showSignedIn);
showSignedIn();
