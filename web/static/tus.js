// A small tus 1.0 client (core, creation, checksum, termination) for the appliance's /api/v1/uploads.
// Chunks are sent with PATCH; each carries its SHA-256 (Upload-Checksum) when the page is a secure
// context (crypto.subtle: https, or http on 127.0.0.1/localhost). The upload URL is kept in
// localStorage under the file's name, size and modification time, so choosing the same file again
// after a reload or a dropped network resumes at the offset the server has.
"use strict";

window.cargohold = window.cargohold || {};

(function () {
  var TUS = "1.0.0";
  var RETRY_DELAYS = [500, 1000, 2000, 4000, 8000, 15000, 15000, 30000, 30000, 30000];

  function b64(buffer) {
    var bytes = new Uint8Array(buffer), text = "";
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text);
  }

  function encodeMetadata(metadata) {
    return Object.keys(metadata).map(function (k) {
      return k + " " + btoa(unescape(encodeURIComponent(String(metadata[k]))));
    }).join(",");
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function TusUpload(file, options) {
    this.file = file;
    this.options = options;
    this.endpoint = options.endpoint;
    this.chunkSize = options.chunkSize || (8 << 20);
    this.metadata = options.metadata || {};
    this.url = null;
    this.offset = 0;
    this.aborted = false;
    this.xhr = null;
    this.samples = [];
    this.resumedFrom = null;
    this.checksums = !!(window.crypto && window.crypto.subtle && window.isSecureContext);
  }

  TusUpload.prototype.storageKey = function () {
    var f = this.file;
    return "cargohold-tus:" + (this.metadata.kind || "bundle") + ":" + f.name + ":" + f.size + ":" + f.lastModified;
  };

  TusUpload.prototype.headers = function (extra) {
    var h = { "Tus-Resumable": TUS, "X-CSRF-Token": cargohold.csrfToken() };
    for (var k in (extra || {})) h[k] = extra[k];
    return h;
  };

  TusUpload.prototype.status = function (text) {
    if (this.options.onStatus) this.options.onStatus(text);
  };

  // Ask the server where the upload stands; null if it no longer exists.
  TusUpload.prototype.head = async function () {
    var resp = await fetch(this.url, { method: "HEAD", headers: this.headers(), credentials: "same-origin", cache: "no-store" });
    if (resp.status === 404 || resp.status === 410) return null;
    if (!resp.ok) throw new Error("HEAD " + this.url + " answered " + resp.status);
    return resp;
  };

  TusUpload.prototype.create = async function () {
    var resp = await fetch(this.endpoint, {
      method: "POST", credentials: "same-origin",
      headers: this.headers({ "Upload-Length": String(this.file.size), "Upload-Metadata": encodeMetadata(this.metadata) }),
    });
    if (resp.status !== 201) {
      var text = (await resp.text()).trim();
      var err = new Error(text || ("creating the upload failed (" + resp.status + ")"));
      err.fatal = resp.status < 500;
      throw err;
    }
    this.url = new URL(resp.headers.get("Location"), window.location.href).toString();
    this.offset = Number(resp.headers.get("Upload-Offset") || 0);
    localStorage.setItem(this.storageKey(), this.url);
    return resp;
  };

  TusUpload.prototype.progress = function (sent) {
    var now = performance.now();
    this.samples.push([now, sent]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 8000) this.samples.shift();
    var first = this.samples[0], rate = 0;
    if (now - first[0] > 250) rate = (sent - first[1]) / ((now - first[0]) / 1000);
    if (this.options.onProgress) {
      this.options.onProgress({ sent: sent, total: this.file.size, rate: rate,
                                remaining: rate > 0 ? (this.file.size - sent) / rate : Infinity });
    }
  };

  // One PATCH of the chunk at this.offset; resolves with the response's status and headers.
  TusUpload.prototype.sendChunk = async function () {
    var self = this, end = Math.min(this.offset + this.chunkSize, this.file.size);
    var body = this.file.slice(this.offset, end), extra = {};
    if (this.checksums) {
      body = await body.arrayBuffer();
      extra["Upload-Checksum"] = "sha256 " + b64(await crypto.subtle.digest("SHA-256", body));
    }
    var start = this.offset;
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      self.xhr = xhr;
      xhr.open("PATCH", self.url);
      var headers = self.headers(extra);
      headers["Upload-Offset"] = String(start);
      headers["Content-Type"] = "application/offset+octet-stream";
      for (var k in headers) xhr.setRequestHeader(k, headers[k]);
      xhr.upload.onprogress = function (e) { self.progress(start + e.loaded); };
      xhr.onload = function () { resolve(xhr); };
      xhr.onerror = function () { reject(new Error("the network dropped during the upload")); };
      xhr.onabort = function () { reject(new Error("aborted")); };
      xhr.send(body);
    });
  };

  TusUpload.prototype.resync = async function () {
    var resp = await this.head();
    if (resp === null) { var e = new Error("the server no longer has this upload (expired or removed)"); e.fatal = true; throw e; }
    this.offset = Number(resp.headers.get("Upload-Offset"));
    return resp;
  };

  // Upload the whole file; resolves with the last response's headers (import job, digest).
  TusUpload.prototype.start = async function () {
    var stored = localStorage.getItem(this.storageKey());
    var last = null;
    if (stored) {
      this.url = stored;
      try {
        last = await this.head();
      } catch (e) { last = null; }
      if (last) {
        this.offset = Number(last.headers.get("Upload-Offset"));
        this.resumedFrom = this.offset;
        this.status("Resuming the earlier upload at " + cargohold.humanBytes(this.offset) + ".");
      } else {
        localStorage.removeItem(this.storageKey());
        this.url = null;
      }
    }
    if (!this.url) last = await this.create();
    var attempt = 0;
    this.progress(this.offset);
    while (this.offset < this.file.size) {
      if (this.aborted) throw new Error("aborted");
      var xhr;
      try {
        xhr = await this.sendChunk();
      } catch (e) {
        if (this.aborted) throw e;
        xhr = null;
        last = e;
      }
      if (xhr && xhr.status === 204) {
        attempt = 0;
        this.offset = Number(xhr.getResponseHeader("Upload-Offset"));
        last = xhr;
        this.progress(this.offset);
        continue;
      }
      if (xhr && xhr.status !== 409 && xhr.status !== 460 && xhr.status < 500 && xhr.status !== 0) {
        var err = new Error((xhr.responseText || "").trim() || ("the upload failed (" + xhr.status + ")"));
        err.fatal = true;
        throw err;
      }
      if (attempt >= RETRY_DELAYS.length) throw new Error("the upload kept failing; choose the file again to resume");
      var delay = RETRY_DELAYS[attempt++];
      this.status((xhr && xhr.status === 460 ? "A chunk arrived damaged" : "The connection dropped") +
                  "; retrying in " + Math.round(delay / 1000) + " s…");
      await sleep(delay);
      try { await this.resync(); } catch (e) { if (e.fatal) throw e; }
    }
    localStorage.removeItem(this.storageKey());
    var header = function (name) {
      if (!last) return null;
      return last.getResponseHeader ? last.getResponseHeader(name) : (last.headers ? last.headers.get(name) : null);
    };
    if (!header("Cargohold-Import-Job") && this.metadata.kind !== "signature") {
      var fin = await this.head();  // the job id is kept with the upload: ask for it
      if (fin) last = fin;
    }
    return { url: this.url, id: this.url.split("/").pop(), header: header };
  };

  TusUpload.prototype.abort = async function (terminate) {
    this.aborted = true;
    if (this.xhr) this.xhr.abort();
    if (terminate && this.url) {
      localStorage.removeItem(this.storageKey());
      await fetch(this.url, { method: "DELETE", headers: this.headers(), credentials: "same-origin" });
    }
  };

  cargohold.TusUpload = TusUpload;
})();
