// Owns: the message banner under the top bar (#message): errors, warnings and confirmations.

import { el } from './dom.js';

// kind: 'error' (default), 'warning' or 'success'; it becomes the class message-<kind>.
export function showMessage(text, kind = 'error') {
  el.messageText.textContent = text;
  el.message.className = 'message message-' + kind;
  el.message.hidden = false;
}

// Shows why an action cannot go on and puts the cursor in the field to fix: `return refuse(...)`.
export function refuse(input, message) {
  showMessage(message);
  input.focus();
  return null;
}

export function clearMessage() {
  el.message.hidden = true;
  el.messageText.textContent = '';
}

export function initMessages() {
  el.messageClose.addEventListener('click', clearMessage);
}
