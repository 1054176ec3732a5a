// cargohold operator UI: small helpers every page shares (no framework, nothing loaded from elsewhere).
"use strict";

window.cargohold = window.cargohold || {};

// The session's CSRF token: every state-changing fetch sends it in X-CSRF-Token.
cargohold.csrfToken = function () {
  var meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute("content") : "";
};

cargohold.humanBytes = function (n) {
  if (n === null || n === undefined || isNaN(n)) return "-";
  var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[i];
};

cargohold.humanDuration = function (seconds) {
  if (!isFinite(seconds) || seconds < 0) return "unknown";
  seconds = Math.round(seconds);
  if (seconds < 60) return seconds + " s";
  var m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return m + " min " + s + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
};

// A confirmation dialog (a real <dialog>, keyboard-usable) for forms marked data-confirm.
cargohold.confirm = function (message, confirmLabel) {
  return new Promise(function (resolve) {
    var dialog = document.createElement("dialog");
    dialog.setAttribute("aria-labelledby", "confirm-text");
    var p = document.createElement("p");
    p.id = "confirm-text";
    p.textContent = message;
    var actions = document.createElement("div");
    actions.className = "actions";
    var cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    var ok = document.createElement("button");
    ok.type = "button";
    ok.className = "primary";
    ok.id = "confirm-ok";
    ok.textContent = confirmLabel || "Confirm";
    actions.append(cancel, ok);
    dialog.append(p, actions);
    document.body.append(dialog);
    var done = function (answer) { dialog.close(); dialog.remove(); resolve(answer); };
    cancel.addEventListener("click", function () { done(false); });
    ok.addEventListener("click", function () { done(true); });
    dialog.addEventListener("cancel", function (e) { e.preventDefault(); done(false); });
    dialog.showModal();
    cancel.focus();
  });
};

document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.confirm || form.dataset.confirmed) return;
  event.preventDefault();
  cargohold.confirm(form.dataset.confirm, form.dataset.confirmLabel).then(function (yes) {
    if (yes) { form.dataset.confirmed = "1"; form.requestSubmit ? form.requestSubmit() : form.submit(); }
  });
});

document.addEventListener("click", function (event) {
  var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
  if (!button) return;
  var input = document.getElementById(button.dataset.copy);
  if (!input) return;
  input.select();
  var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); });
  } else { document.execCommand("copy"); done(); }
});
