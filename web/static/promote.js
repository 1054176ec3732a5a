// Promoting a NOT READY release: the confirmation dialog asks for the reason (recorded in the audit log)
// and its Promote button stays disabled until one is typed. The server refuses an empty reason too.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("promote-form");
  if (!form || !form.dataset.reasonConfirm) return;
  var hidden = document.getElementById("promote-reason");

  form.addEventListener("submit", function (event) {
    if (form.dataset.confirmed) return;
    event.preventDefault();
    var dialog = document.createElement("dialog");
    dialog.setAttribute("aria-labelledby", "reason-text");
    var p = document.createElement("p");
    p.id = "reason-text";
    p.textContent = form.dataset.reasonConfirm;
    var label = document.createElement("label");
    label.htmlFor = "reason-input";
    label.textContent = "Reason (required; recorded in the audit log)";
    var input = document.createElement("textarea");
    input.id = "reason-input";
    input.maxLength = 500;
    input.rows = 3;
    input.required = true;
    var actions = document.createElement("div");
    actions.className = "actions";
    var cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    var ok = document.createElement("button");
    ok.type = "button";
    ok.className = "danger";
    ok.id = "confirm-ok";
    ok.textContent = form.dataset.confirmLabel || "Promote anyway";
    ok.disabled = true;
    actions.append(cancel, ok);
    dialog.append(p, label, input, actions);
    document.body.append(dialog);
    var close = function () { dialog.close(); dialog.remove(); };
    input.addEventListener("input", function () { ok.disabled = input.value.trim() === ""; });
    cancel.addEventListener("click", close);
    dialog.addEventListener("cancel", function (e) { e.preventDefault(); close(); });
    ok.addEventListener("click", function () {
      if (input.value.trim() === "") return;
      hidden.value = input.value.trim();
      close();
      form.dataset.confirmed = "1";
      form.submit();
    });
    dialog.showModal();
    input.focus();
  });
});
