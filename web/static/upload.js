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
// the offset the appliance has. Another browser has no such memory: every upload also carries a fingerprint of the
// file (its name, size and the SHA-256 of its first and last MiB), and the page asks the appliance for an
// unfinished upload of the same administrator with that fingerprint (GET /api/v1/uploads?fingerprint=...).
// A parallel upload's parts get slightly different lengths (`boundaries`), so the parts the appliance lists can be
// put back in order by their length alone.
// Several bundles (or the .partNNN files of a split bundle, which is imported as one bundle: POST
// /api/v1/imports/uploads) go up one after another, each imported before the next starts.
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
  var MIB = 1 << 20;
  var PART_NAME = /^(.*)\.part(\d{3,})$/;
  var SIG_NAME = /\.(sig|sign|b64)$/i;

  // The fingerprint the appliance files an upload under: name, size and the SHA-256 of the first and last MiB
  // (reading the whole file would take minutes on a phone). Without Web Crypto (plain HTTP to a LAN address) the
  // name and size alone.
  async function fingerprintOf(file) {
    var fp = "cargohold:" + file.name + ":" + file.size;
    if (!(window.crypto && crypto.subtle)) return fp;
    var head = await file.slice(0, MIB).arrayBuffer();
    var tail = await file.slice(Math.max(0, file.size - MIB)).arrayBuffer();
    var both = new Uint8Array(head.byteLength + tail.byteLength);
    both.set(new Uint8Array(head), 0);
    both.set(new Uint8Array(tail), head.byteLength);
    var digest = new Uint8Array(await crypto.subtle.digest("SHA-256", both));
    return fp + ":" + Array.from(digest, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  }

  // The byte ranges of a parallel upload's `n` parts: all but the last one byte shorter than the one before, the
  // last the rest (the longest), so each part's length says which part it is.
  function boundaries(size, n) {
    var each = Math.floor(size / n), out = [], start = 0;
    for (var i = 0; i < n - 1; i++) { out.push({ start: start, end: start + each - i - 1 }); start = out[i].end; }
    out.push({ start: start, end: size });
    return out;
  }

  // An unfinished upload of this file on the appliance (started by this administrator in any browser), or null.
  async function serverUpload(fingerprint) {
    try {
      var resp = await fetch(form.dataset.endpoint + "?fingerprint=" + encodeURIComponent(fingerprint),
                             { credentials: "same-origin", cache: "no-store" });
      if (!resp.ok) return null;
      var found = (await resp.json()).uploads;
      return found.length ? found[0] : null;
    } catch (e) { return null; }
  }

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
    var sigs = files.filter(function (f) { return SIG_NAME.test(f.name); });
    var bundles = files.filter(function (f) { return sigs.indexOf(f) < 0; });
    var put = function (input, chosen) {
      var dt = new DataTransfer();
      chosen.forEach(function (f) { dt.items.add(f); });
      input.files = dt.files;
    };
    if (bundles.length) put(bundleInput, bundles);
    if (sigs.length) put(sigInput, sigs);
  });

  function showError(text) {
    card.hidden = false;  // the error line is in the progress card, hidden until something was started
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
  // (message "aborted" after cancel()). `fingerprint`: fingerprintOf(file).
  function TusFile(file, metadata, onProgress, fingerprint) {
    var self = this;
    this.file = file;
    this.onProgress = onProgress;
    this.serverFingerprint = fingerprint;
    this.known = [];  // every upload URL this upload created or resumed: what Cancel removes
    this.fingerprint = "cargohold-tus:" + metadata.kind + ":" + file.name + ":" + file.size + ":" + file.lastModified;
    metadata = Object.assign({}, metadata, { size: String(file.size), fingerprint: fingerprint });
    // Parts no smaller than a chunk: a small file (a signature) goes up in one request.
    var parts = Math.max(1, Math.min(parallel, Math.floor(file.size / chunkSize)));
    this.done = new Promise(function (resolve, reject) {
      self.reject = reject;
      self.upload = new tus.Upload(file, {
        endpoint: endpoint,
        chunkSize: chunkSize,
        parallelUploads: parts,
        parallelUploadBoundaries: parts > 1 ? boundaries(file.size, parts) : null,
        metadata: metadata,
        metadataForPartialUploads: { filename: file.name, kind: metadata.kind, size: metadata.size,
                                     fingerprint: fingerprint },
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

  // Continue in `n` parts, the way it was started, whatever this page would choose now.
  TusFile.prototype.inParts = function (n) {
    this.upload.options.parallelUploads = n;
    this.upload.options.parallelUploadBoundaries = n > 1 ? boundaries(this.file.size, n) : null;
  };

  // Find an unfinished upload of the same file (kept by tus-js-client in this browser, else on the appliance),
  // resume it, and start.
  TusFile.prototype.start = async function () {
    var previous = await this.upload.findPreviousUploads();
    previous.sort(function (a, b) { return Date.parse(b.creationTime) - Date.parse(a.creationTime); });
    previous.slice(1).forEach(function (stale) { storage.removeUpload(stale.urlStorageKey); });
    if (previous.length) {
      var p = previous[0];
      this.inParts(p.parallelUploadUrls ? p.parallelUploadUrls.length : 1);
      this.upload.resumeFromPreviousUpload(p);
      this.known = this.known.concat(p.parallelUploadUrls || [p.uploadUrl]).filter(Boolean);
      showStatus("Resuming the earlier upload of this file (started " + new Date(p.creationTime).toLocaleString() +
                 ") from where the appliance stopped…");
    } else {
      var found = await serverUpload(this.serverFingerprint);
      if (found && found.complete && found.uploads.length === 1) {  // a part of a split bundle already sent whole
        var url = new URL(found.uploads[0].url, endpoint).toString();
        if (this.onProgress) this.onProgress(this.file.size, this.file.size);
        showStatus(this.file.name + " is already on the appliance; not sending it again.");
        return { url: url, id: url.split("/").pop(), header: function () { return null; } };
      }
      var urls = found && !found.complete ? this.order(found) : null;
      if (urls) {
        this.inParts(found.parallel ? urls.length : 1);
        this.upload.resumeFromPreviousUpload(found.parallel ? { parallelUploadUrls: urls } : { uploadUrl: urls[0] });
        this.known = this.known.concat(urls);
        showStatus("Resuming the upload of this file started by " + found.owner + " (" +
                   new Date(found.createdAt * 1000).toLocaleString() + ", " + found.percent + "% done) from where " +
                   "the appliance stopped…");
      }
    }
    this.upload.start();
    return this.done;
  };

  // The absolute URLs of an unfinished upload the appliance listed, in part order (by length: `boundaries`),
  // or null when they do not fit this file (then it starts afresh).
  TusFile.prototype.order = function (found) {
    var parts = found.uploads;
    if (!found.parallel) return parts.length === 1 ? [new URL(parts[0].url, endpoint).toString()] : null;
    var ranges = boundaries(this.file.size, parts.length), urls = [];
    for (var r of ranges) {
      var match = parts.find(function (p) { return p.length === r.end - r.start; });
      if (!match) return null;
      urls.push(new URL(match.url, endpoint).toString());
    }
    return urls;
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

  function makeTus(file, metadata, onProgress) {
    return fingerprintOf(file).then(function (fp) { return new TusFile(file, metadata, onProgress, fp); });
  }

  // What was chosen, as bundles to upload in turn: [{name, files (a split bundle's parts in order), split, sig,
  // size}]; throws an Error to show when the choice does not make whole bundles.
  function plan() {
    var chosen = Array.from(bundleInput.files).concat(Array.from(sigInput.files));
    var sigs = chosen.filter(function (f) { return SIG_NAME.test(f.name); });
    var items = [], byBase = {};
    chosen.forEach(function (f) {
      if (sigs.indexOf(f) >= 0) return;
      var m = PART_NAME.exec(f.name);
      if (!m) { items.push({ name: f.name, files: [f], split: false }); return; }
      if (!byBase[m[1]]) { byBase[m[1]] = { name: m[1], files: [], split: true }; items.push(byBase[m[1]]); }
      byBase[m[1]].files.push(f);
    });
    items.forEach(function (item) {
      if (item.split) {
        item.files.sort(function (a, b) { return Number(PART_NAME.exec(a.name)[2]) - Number(PART_NAME.exec(b.name)[2]); });
        item.files.forEach(function (f, i) {
          if (Number(PART_NAME.exec(f.name)[2]) !== i) {
            throw new Error("Part " + String(i).padStart(3, "0") + " of " + item.name + " is missing. Choose all " +
                            "the .part files of the bundle at once (nothing was uploaded).");
          }
        });
      }
      item.size = item.files.reduce(function (n, f) { return n + f.size; }, 0);
      item.sig = sigs.find(function (s) { return s.name.replace(SIG_NAME, "") === item.name; }) || null;
    });
    if (items.length === 1 && !items[0].sig && sigs.length === 1) items[0].sig = sigs[0];
    return items;
  }

  // The import's job id once the bundle's last byte is in (a split bundle: once its parts are in and joined).
  async function uploadItem(item, onProgress) {
    var sigId = null;
    if (item.sig) {
      showStatus("Uploading the signature…");
      current = await makeTus(item.sig, { filename: item.sig.name, kind: "signature" }, null);
      sigId = (await current.start()).id;
    }
    var report = progressReporter(), before = 0;
    var progress = function (sent) { report(before + sent, item.size); onProgress(before + sent); };
    if (!item.split) {
      var metadata = { filename: item.name, kind: "bundle" };
      if (sigId) metadata.signature = sigId;
      current = await makeTus(item.files[0], metadata, progress);
      window.cargoholdUpload = current;  // for diagnostics
      var done = await current.start();
      var job = done.header("Cargohold-Import-Job");
      if (!job) {  // the job id is kept with the upload: ask for it
        var head = await fetch(done.url, { method: "HEAD", credentials: "same-origin", cache: "no-store",
                                           headers: { "Tus-Resumable": "1.0.0" } });
        job = head.ok ? head.headers.get("Cargohold-Import-Job") : null;
      }
      showStatus("Upload complete (" + (done.header("Cargohold-Upload-Sha256") || "") + "). Starting the import…");
      return job;
    }
    var ids = [];
    sentParts = [];
    for (var part of item.files) {
      current = await makeTus(part, { filename: part.name, kind: "part" }, progress);
      window.cargoholdUpload = current;
      var sent = await current.start();
      ids.push(sent.id);
      sentParts.push(sent.url);
      before += part.size;
    }
    sentParts = [];
    showStatus("All " + ids.length + " parts are in. Starting the import…");
    var resp = await fetch(form.dataset.importParts, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": cargohold.csrfToken() },
      body: JSON.stringify({ parts: ids, signature: sigId }),
    });
    var body = await resp.json().catch(function () { return {}; });
    if (!resp.ok) {
      throw new Error((body.errors && body.errors[0] && body.errors[0].message) || ("the appliance answered " + resp.status));
    }
    return body.jobId;
  }

  // Wait for an import to end; resolves with its job.
  async function importEnd(jobId) {
    for (;;) {
      try {
        var resp = await fetch("/ui/api/imports/" + jobId, { credentials: "same-origin", cache: "no-store" });
        if (resp.ok) {
          var job = await resp.json();
          if (job.state === "done" || job.state === "failed") return job;
        }
      } catch (e) { /* the network dropped: ask again */ }
      await new Promise(function (r) { setTimeout(r, 1000); });
    }
  }

  // One line of the queue: the bundle, and what is happening to it.
  function queueLine(item) {
    var li = document.createElement("li");
    var name = document.createElement("span");
    name.className = "queue-name";
    name.textContent = item.name + (item.split ? " (" + item.files.length + " parts)" : "") + ", " +
      cargohold.humanBytes(item.size) + (item.sig ? ", signed" : "");
    var state = document.createElement("span");
    state.className = "queue-state";
    state.textContent = "waiting";
    li.append(name, " — ", state);
    queue.append(li);
    return { li: li, state: state };
  }

  var queue = document.getElementById("queue");
  var sentParts = [];  // the split bundle's parts already on the appliance, not imported yet: what Cancel also removes

  form.addEventListener("submit", async function (e) {
    e.preventDefault();
    var items;
    try { items = plan(); } catch (err) { showError(err.message); return; }
    if (!items.length) { showError("Choose a bundle file first."); bundleInput.focus(); return; }
    var max = Number(form.dataset.maxSize);
    var big = items.find(function (item) { return item.files.some(function (f) { return max && f.size > max; }); });
    if (big) { showError(big.name + " is larger than this appliance accepts (" + cargohold.humanBytes(max) + ")."); return; }
    errorLine.hidden = true;
    document.getElementById("resume-hint").hidden = true;
    card.hidden = false;
    startButton.disabled = true;
    cancelButton.hidden = false;
    queue.replaceChildren();
    var lines = items.map(queueLine);
    queue.hidden = items.length < 2 && !items[0].split;
    try {
      for (var i = 0; i < items.length; i++) {
        var item = items[i], line = lines[i];
        fileLine.textContent = (items.length > 1 ? "Bundle " + (i + 1) + " of " + items.length + ": " : "") +
          item.name + " (" + cargohold.humanBytes(item.size) + ")";
        bar.value = 0;
        line.state.textContent = "uploading";
        var job;
        try {
          job = await uploadItem(item, function (sent) {
            line.state.textContent = "uploading, " + (100 * sent / (item.size || 1)).toFixed(0) + "%";
          });
        } catch (err) {
          line.state.textContent = err.message === "aborted" ? "cancelled" : "upload failed: " + err.message;
          throw err;
        }
        if (!job) {
          line.state.textContent = "uploaded, but no import started";
          showError("The upload of " + item.name + " finished but no import started; see the Imports page.");
          continue;
        }
        if (items.length === 1) { window.location.assign("/ui/imports/" + job); return; }
        var link = document.createElement("a");
        link.href = "/ui/imports/" + job;
        link.textContent = "import report";
        line.state.textContent = "importing";
        line.li.append(" (", link, ")");
        var ended = await importEnd(job);
        line.state.textContent = ended.state === "done" ? "imported" : "import failed: " + ended.error;
      }
      showStatus("All " + items.length + " bundles are handled; their reports are linked above and on the Imports page.");
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
      for (var url of sentParts) {
        await fetch(url, { method: "DELETE", credentials: "same-origin",
                           headers: { "Tus-Resumable": "1.0.0", "X-CSRF-Token": cargohold.csrfToken() } });
      }
      sentParts = [];
      await current.cancel();  // the upload's own flow then reports it
    }
  });
});
