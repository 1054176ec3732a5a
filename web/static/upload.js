// The upload page: pick or drop a bundle (and signature), upload it with tus-js-client (vendor/tus-js-client), then
// follow the import.
//
// A bundle goes up as several partial uploads in parallel, joined on the appliance by tus concatenation: one
// connection at a time cannot keep a fast link busy, several can (docs/performance.md, "Browser uploads"). Each
// part is sent in bounded chunks (one PATCH each), so a dropped connection loses at most the chunk in flight. No
// per-chunk checksum is sent: TCP (and TLS) protect the transfer, the appliance records the SHA-256 of the whole
// assembled file, and the import verifies the bundle's signature and every blob's digest (docs/ui.md).
// Resuming: tus-js-client keeps the part URLs in localStorage under the file's kind, name, size and modification
// time; choosing the same file again (after a reload, a closed page, a dropped network) continues every part from
// the offset the appliance has.
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
  // Chosen by measurement (scripts/bench_upload.py, docs/performance.md "Browser uploads"): over an emulated
  // gigabit link, 1 part reached 40-82 MiB/s, 2 parts 78-95, 4 parts 98-101 (of 119), 6 no more; chunks of 16,
  // 32 and 64 MiB did alike, and 64 MiB is what scripted uploads send (tuspy, the CLI), so a proxy in front has
  // one size to allow.
  // A test (or a very poor link) may set window.CARGOHOLD_CHUNK_SIZE / window.CARGOHOLD_PARALLEL_UPLOADS first.
  var chunkSize = Number(window.CARGOHOLD_CHUNK_SIZE) || (64 << 20);
  var parallel = Number(window.CARGOHOLD_PARALLEL_UPLOADS) || 4;
  var RETRY_DELAYS = [500, 1000, 2000, 4000, 8000, 15000, 15000, 30000, 30000, 30000];
  // tus-js-client resolves upload URLs against the endpoint, which must therefore be absolute.
  var endpoint = new URL(form.dataset.endpoint, window.location.href).toString();
  var storage = tus.defaultOptions.urlStorage;

  // An unfinished upload kept from an earlier page: say so, since the browser needs the file chosen again.
  storage.findAllUploads().then(function (all) {
    var waiting = all.filter(function (u) { return u.urlStorageKey.indexOf("tus::cargohold-tus:bundle:") === 0; });
    if (!waiting.length) return;
    var hint = document.getElementById("resume-hint");
    hint.textContent = "Unfinished upload: " + waiting.map(function (u) {
      return ((u.metadata && u.metadata.filename) || "a bundle") + " (" + cargohold.humanBytes(u.size) + ", started " +
        new Date(u.creationTime).toLocaleString() + ")";
    }).join("; ") + ". Choose the same file to continue where it stopped.";
    hint.hidden = false;
  });

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

  // The status line: progress (or a step), and a notice (a retry) that stays until the next chunk arrives.
  var stepText = "", notice = "";
  function render() { statusLine.textContent = notice ? stepText + (stepText ? " — " : "") + notice : stepText; }
  function showStatus(text) { stepText = text; render(); }
  function showNotice(text) { notice = text; render(); }

  // Progress with the rate over the last 8 seconds and the time left at that rate.
  function progressReporter() {
    var samples = [];
    return function (sent, total) {
      var now = performance.now();
      samples.push([now, sent]);
      while (samples.length > 2 && now - samples[0][0] > 8000) samples.shift();
      var first = samples[0], rate = 0;
      if (now - first[0] > 250) rate = (sent - first[1]) / ((now - first[0]) / 1000);
      var pct = total ? (100 * sent / total) : 100;
      bar.value = pct;
      bar.setAttribute("aria-valuetext", pct.toFixed(0) + " percent");
      showStatus(cargohold.humanBytes(sent) + " of " + cargohold.humanBytes(total) +
        " (" + pct.toFixed(1) + "%) — " + (rate > 0 ? cargohold.humanBytes(rate) + "/s" : "measuring rate") +
        ", " + (rate > 0 ? cargohold.humanDuration((total - sent) / rate) + " left" : "time left unknown"));
    };
  }

  // The message for an error from tus-js-client: the appliance's own sentence when it answered.
  function describe(err) {
    var res = err && err.originalResponse;
    if (res) {
      var text = (res.getBody() || "").trim();
      return text || ("the appliance answered " + res.getStatus());
    }
    if (err && err.originalRequest) return "the connection dropped and the retries ran out; choose the file again to resume";
    return (err && err.message) || String(err);
  }

  // Upload one file; resolves with {url, id, header(name)} of the completed upload, rejects with an Error
  // (message "aborted" after cancel()).
  function TusFile(file, metadata, onProgress) {
    var self = this;
    this.known = [];  // every upload URL this upload created or resumed: what Cancel removes
    this.fingerprint = "cargohold-tus:" + metadata.kind + ":" + file.name + ":" + file.size + ":" + file.lastModified;
    // Parts no smaller than a chunk: a small file (a signature) goes up in one request.
    var parts = Math.max(1, Math.min(parallel, Math.floor(file.size / chunkSize)));
    this.done = new Promise(function (resolve, reject) {
      self.reject = reject;
      self.upload = new tus.Upload(file, {
        endpoint: endpoint,
        chunkSize: chunkSize,
        parallelUploads: parts,
        metadata: metadata,
        headers: { "X-CSRF-Token": cargohold.csrfToken() },
        fingerprint: function () { return Promise.resolve(self.fingerprint); },
        removeFingerprintOnSuccess: true,
        retryDelays: RETRY_DELAYS,
        onShouldRetry: function (err, attempt, options) {
          var req = err.originalRequest, res = err.originalResponse;
          var status = res ? res.getStatus() : 0;
          // Transient: no answer, a 5xx, an offset conflict (409), a lock (423), or the front's cap on uploads at once
          // from one address (429: with few threads it can be below the number of parts; they take turns).
          var retry = (status < 400 || status >= 500 || status === 409 || status === 423 || status === 429) &&
                      navigator.onLine !== false;
          // A part that gives up has used its own retries; the whole upload then stops (the final request,
          // which joins the parts, is retried like any other).
          var whole = options.parallelUploads > 1;
          var joining = req && req.getMethod() === "POST" && /^final;/.test(req.getHeader("Upload-Concat") || "");
          if (whole && !joining) return false;
          if (retry) {
            showNotice((status ? "The appliance answered " + status : "The connection dropped") + "; retrying in " +
                       Math.max(1, Math.round(options.retryDelays[attempt] / 1000)) + " s…");
          }
          return retry;
        },
        onChunkComplete: function () { if (notice) showNotice(""); },
        onAfterResponse: function (req, res) {
          if (req.getMethod() === "POST" && res.getStatus() === 201 && res.getHeader("Location")) {
            self.known.push(new URL(res.getHeader("Location"), endpoint).toString());
          }
        },
        onProgress: onProgress,
        onSuccess: function (payload) {
          var res = payload.lastResponse;
          showNotice("");
          resolve({ url: self.upload.url, id: self.upload.url.split("/").pop(),
                    header: function (name) { return res ? res.getHeader(name) : null; } });
        },
        onError: function (err) {
          showNotice("");
          self.upload.abort();  // stop the parts still running
          reject(new Error(describe(err)));
        },
      });
    });
  }

  // Find an unfinished upload of the same file (kept by tus-js-client), resume it, and start.
  TusFile.prototype.start = async function () {
    var previous = await this.upload.findPreviousUploads();
    previous.sort(function (a, b) { return Date.parse(b.creationTime) - Date.parse(a.creationTime); });
    previous.slice(1).forEach(function (stale) { storage.removeUpload(stale.urlStorageKey); });
    if (previous.length) {
      var p = previous[0];
      // Continue in as many parts as it was started with, whatever this page would choose now.
      this.upload.options.parallelUploads = p.parallelUploadUrls ? p.parallelUploadUrls.length : 1;
      this.upload.resumeFromPreviousUpload(p);
      this.known = this.known.concat(p.parallelUploadUrls || [p.uploadUrl]).filter(Boolean);
      showStatus("Resuming the earlier upload of this file (started " + new Date(p.creationTime).toLocaleString() +
                 ") from where the appliance stopped…");
    }
    this.upload.start();
    return this.done;
  };

  // Stop, and remove everything this upload put on the appliance and in localStorage.
  TusFile.prototype.cancel = async function () {
    await this.upload.abort(false);
    for (var url of this.known) {
      await fetch(url, { method: "DELETE", credentials: "same-origin",
                         headers: { "Tus-Resumable": "1.0.0", "X-CSRF-Token": cargohold.csrfToken() } });
    }
    var stored = await this.upload.findPreviousUploads();
    stored.forEach(function (p) { storage.removeUpload(p.urlStorageKey); });
    this.reject(new Error("aborted"));
  };

  form.addEventListener("submit", async function (e) {
    e.preventDefault();
    var bundle = bundleInput.files[0];
    if (!bundle) { showError("Choose a bundle file first."); bundleInput.focus(); return; }
    var max = Number(form.dataset.maxSize);
    if (max && bundle.size > max) { showError("The bundle is larger than this appliance accepts (" + cargohold.humanBytes(max) + ")."); return; }
    errorLine.hidden = true;
    document.getElementById("resume-hint").hidden = true;
    card.hidden = false;
    startButton.disabled = true;
    cancelButton.hidden = false;
    fileLine.textContent = bundle.name + " (" + cargohold.humanBytes(bundle.size) + ")";
    try {
      var metadata = { filename: bundle.name, kind: "bundle" };
      var sig = sigInput.files[0];
      if (sig) {
        showStatus("Uploading the signature…");
        current = new TusFile(sig, { filename: sig.name, kind: "signature" }, null);
        metadata.signature = (await current.start()).id;
      }
      current = new TusFile(bundle, metadata, progressReporter());
      window.cargoholdUpload = current;  // for diagnostics
      var done = await current.start();
      var job = done.header("Cargohold-Import-Job");
      if (!job) {  // the job id is kept with the upload: ask for it
        var head = await fetch(done.url, { method: "HEAD", credentials: "same-origin", cache: "no-store",
                                           headers: { "Tus-Resumable": "1.0.0" } });
        job = head.ok ? head.headers.get("Cargohold-Import-Job") : null;
      }
      showStatus("Upload complete (" + (done.header("Cargohold-Upload-Sha256") || "") + "). Starting the import…");
      if (job) { window.location.assign("/ui/imports/" + job); return; }
      showError("The upload finished but no import started; see the Imports page.");
    } catch (err) {
      if (err.message === "aborted") showStatus("Upload cancelled.");
      else showError("Upload failed: " + err.message);
    } finally {
      startButton.disabled = false;
      cancelButton.hidden = true;
    }
  });

  cancelButton.addEventListener("click", async function () {
    if (!current) return;
    if (await cargohold.confirm("Cancel this upload and discard what was sent?", "Cancel upload")) {
      await current.cancel();  // the upload's own flow then reports it
    }
  });
});
