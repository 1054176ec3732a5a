// The import page: poll the job until it is done or failed, then show the report (a reload renders it).
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var section = document.getElementById("job");
  if (!section) return;
  var state = section.dataset.state;
  if (state === "done" || state === "failed") return;
  var bar = document.getElementById("job-bar");
  var stateBadge = document.getElementById("job-state");
  var statusLine = document.getElementById("job-status");
  var samples = [];

  async function poll() {
    var resp;
    try {
      resp = await fetch(section.dataset.jobUrl, { credentials: "same-origin", cache: "no-store" });
    } catch (e) { setTimeout(poll, 2000); return; }
    if (!resp.ok) { setTimeout(poll, 2000); return; }
    var job = await resp.json();
    // Done or failed: reload before showing the new state, so the page that says "done" or "failed" is the
    // server's, with the report or the refusal in plain words and the next step (web/ui/messages.py).
    if (job.state === "done" || job.state === "failed") { window.location.reload(); return; }
    stateBadge.textContent = job.state;
    stateBadge.className = "badge state-" + job.state;
    bar.max = job.bytesTotal || 1;
    bar.value = job.bytesDone;
    var now = performance.now();
    samples.push([now, job.bytesDone]);
    while (samples.length > 2 && now - samples[0][0] > 8000) samples.shift();
    var rate = samples.length > 1 ? (job.bytesDone - samples[0][1]) / ((now - samples[0][0]) / 1000) : 0;
    statusLine.textContent = job.state + ": " + cargohold.humanBytes(job.bytesDone) + " of " +
      cargohold.humanBytes(job.bytesTotal) + (rate > 0 ? " — " + cargohold.humanBytes(rate) + "/s, " +
      cargohold.humanDuration((job.bytesTotal - job.bytesDone) / rate) + " left" : "");
    setTimeout(poll, 700);
  }
  poll();
});
