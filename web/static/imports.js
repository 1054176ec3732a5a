// The Imports page and an import's report page: "Retry import" runs a failed or interrupted import again from the uploaded file still on the
// appliance (POST /api/v1/imports/<id>/retry), then opens the new import's page.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var errorLine = document.getElementById("retry-error");
  document.querySelectorAll("button.retry-import").forEach(function (button) {
    button.addEventListener("click", async function () {
      button.disabled = true;
      errorLine.hidden = true;
      var message;
      try {
        var resp = await fetch("/api/v1/imports/" + button.dataset.job + "/retry", {
          method: "POST", credentials: "same-origin", cache: "no-store",
          headers: { "X-CSRF-Token": cargohold.csrfToken() },
        });
        var body = await resp.json().catch(function () { return {}; });
        if (resp.ok && body.jobId) { window.location.assign("/ui/imports/" + body.jobId); return; }
        message = (body.errors && body.errors[0] && body.errors[0].message) || ("the appliance answered " + resp.status);
      } catch (e) {
        message = "the appliance could not be reached; check the network and try again";
      }
      errorLine.textContent = "Retry import failed: " + message;
      errorLine.hidden = false;
      button.disabled = false;
    });
  });
});
