// The upload page: pick or drop a bundle (and signature), upload with tus, then follow the import.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("upload-form");
  var bundleInput = document.getElementById("bundle");
  var sigInput = document.getElementById("signature");
  var zone = document.getElementById("dropzone");
  var card = document.getElementById("progress-card");
  var bar = document.getElementById("upload-bar");
  var statusLine = document.getElementById("upload-status");
  var fileLine = document.getElementById("upload-file");
  var errorLine = document.getElementById("upload-error");
  var startButton = document.getElementById("start");
  var cancelButton = document.getElementById("cancel");
  var current = null;
  // Chunk size: 8 MiB; a test (or a very poor link) may set window.CARGOHOLD_CHUNK_SIZE before the page loads.
  var chunkSize = Number(window.CARGOHOLD_CHUNK_SIZE) || (8 << 20);

  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    var files = Array.from(e.dataTransfer.files || []);
    var sig = files.find(function (f) { return /\.(sig|sign|b64)$/i.test(f.name); });
    var bundle = files.find(function (f) { return f !== sig; });
    var put = function (input, file) { var dt = new DataTransfer(); dt.items.add(file); input.files = dt.files; };
    if (bundle) put(bundleInput, bundle);
    if (sig) put(sigInput, sig);
  });

  function showError(text) {
    errorLine.textContent = text;
    errorLine.hidden = false;
  }

  function onProgress(p) {
    var pct = p.total ? (100 * p.sent / p.total) : 100;
    bar.value = pct;
    bar.setAttribute("aria-valuetext", pct.toFixed(0) + " percent");
    statusLine.textContent = cargohold.humanBytes(p.sent) + " of " + cargohold.humanBytes(p.total) +
      " (" + pct.toFixed(1) + "%) — " + (p.rate > 0 ? cargohold.humanBytes(p.rate) + "/s" : "measuring rate") +
      ", " + (p.rate > 0 ? cargohold.humanDuration(p.remaining) + " left" : "time left unknown");
  }

  form.addEventListener("submit", async function (e) {
    e.preventDefault();
    var bundle = bundleInput.files[0];
    if (!bundle) { showError("Choose a bundle file first."); bundleInput.focus(); return; }
    var max = Number(form.dataset.maxSize);
    if (max && bundle.size > max) { showError("The bundle is larger than this appliance accepts (" + cargohold.humanBytes(max) + ")."); return; }
    errorLine.hidden = true;
    card.hidden = false;
    startButton.disabled = true;
    cancelButton.hidden = false;
    fileLine.textContent = bundle.name + " (" + cargohold.humanBytes(bundle.size) + ")";
    try {
      var metadata = { filename: bundle.name, kind: "bundle" };
      var sig = sigInput.files[0];
      if (sig) {
        statusLine.textContent = "Uploading the signature…";
        current = new cargohold.TusUpload(sig, { endpoint: form.dataset.endpoint, metadata: { filename: sig.name, kind: "signature" } });
        var sigDone = await current.start();
        metadata.signature = sigDone.id;
      }
      current = new cargohold.TusUpload(bundle, {
        endpoint: form.dataset.endpoint, metadata: metadata, chunkSize: chunkSize,
        onProgress: onProgress, onStatus: function (t) { statusLine.textContent = t; },
      });
      window.cargoholdUpload = current;  // for diagnostics
      var done = await current.start();
      var job = done.header("Cargohold-Import-Job");
      statusLine.textContent = "Upload complete (" + (done.header("Cargohold-Upload-Sha256") || "") + "). Starting the import…";
      if (job) { window.location.assign("/ui/imports/" + job); return; }
      showError("The upload finished but no import started; see the Imports page.");
    } catch (err) {
      if (err.message !== "aborted") showError("Upload failed: " + err.message);
    } finally {
      startButton.disabled = false;
      cancelButton.hidden = true;
    }
  });

  cancelButton.addEventListener("click", async function () {
    if (!current) return;
    if (await cargohold.confirm("Cancel this upload and discard what was sent?", "Cancel upload")) {
      await current.abort(true);
      statusLine.textContent = "Upload cancelled.";
    }
  });
});
