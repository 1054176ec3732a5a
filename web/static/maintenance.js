// A running maintenance job's page (web/templates/ui/maintenance_job.html) reloads itself until the job ends.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  if (document.querySelector("[data-job-running]")) {
    window.setTimeout(function () { window.location.reload(); }, 1500);
  }
});
