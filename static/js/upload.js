/* The cohort page's uploads: slide files (resumable, chunked, MD5-checked, one progress bar per
   file, retry), a label CSV / GDC manifest, and pathologists' GeoJSON contours.

   Slide upload protocol (the API): POST /api/cohorts/{id}/uploads {filename, size, md5} gives
   an upload with an offset; each chunk is PUT to /api/uploads/{id} with
   "Content-Range: bytes START-END/TOTAL" starting at the server's offset; GET tells the offset
   after an interruption. The upload's id and checksum are kept in localStorage, so the same
   file chosen again after a reload resumes instead of starting over. */
(function () {
  "use strict";
  const { api, apiAll, h, formatBytes, say } = window.TM;
  const config = window.TM.jsonData("upload-config");
  if (!config) return;

  // Two files at a time: enough to keep the link busy while one file is being checked and
  // registered by the server, few enough that each file finishes early.
  const PARALLEL = 2;
  // Retries of one chunk after a network error or a server error, with doubling waits.
  const CHUNK_RETRIES = 4;
  const RETRY_BASE_MS = 1000;
  // Bytes hashed per read: a few MB keeps the page responsive between reads.
  const HASH_SLICE = 4 * 1024 * 1024;

  const list = document.getElementById("upload-list");
  const queue = [];
  let running = 0;

  function storageKey(file) {
    return `tumormap-upload:${config.cohort}:${file.name}:${file.size}:${file.lastModified}`;
  }

  function remember(file, value) {
    try {
      if (value) localStorage.setItem(storageKey(file), JSON.stringify(value));
      else localStorage.removeItem(storageKey(file));
    } catch (err) { /* private mode: resuming after a reload is then not possible */ }
  }

  function recall(file) {
    try { return JSON.parse(localStorage.getItem(storageKey(file)) || "null"); }
    catch (err) { return null; }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class FileUpload {
    constructor(file) {
      this.file = file;
      this.uploadId = null;
      this.md5 = null;
      this.offset = 0;
      this.xhr = null;
      this.cancelled = false;
      const id = `upload-${Math.random().toString(36).slice(2, 10)}`;
      this.bar = h("progress", { max: 100, value: 0, id, "aria-label": `Upload of ${file.name}` });
      this.percent = h("span", { class: "percent", text: "0%" });
      this.status = h("span", { class: "upload-status", text: "waiting" });
      this.retryButton = h("button", { type: "button", class: "secondary small", hidden: true,
                                       text: "Retry", onclick: () => this.retry() });
      this.cancelButton = h("button", { type: "button", class: "secondary small", text: "Cancel",
                                        onclick: () => this.cancel() });
      this.item = h("li", { class: "upload", "data-file": file.name },
        h("div", { class: "upload-head" },
          h("span", { class: "upload-name", text: file.name }),
          h("span", { class: "muted small", text: formatBytes(file.size) })),
        h("div", { class: "upload-bar" }, this.bar, this.percent),
        h("div", { class: "upload-foot" }, this.status, this.retryButton, this.cancelButton));
      list.append(this.item);
    }

    setState(state, message) {
      this.item.dataset.state = state;
      say(this.status, message, state === "failed" ? "error" : state === "done" ? "ok" : "");
    }

    setProgress(fraction) {
      const pct = Math.max(0, Math.min(100, Math.floor(fraction * 100)));
      this.bar.value = pct;
      this.percent.textContent = `${pct}%`;
    }

    check() {
      const dot = this.file.name.lastIndexOf(".");
      const ext = dot >= 0 ? this.file.name.slice(dot).toLowerCase() : "";
      const refuse = (message) => Object.assign(new Error(message), { permanent: true });
      if (!config.extensions.includes(ext)) {
        throw refuse(`not a slide file (${config.extensions.join(", ")})`);
      }
      if (this.file.size === 0) throw refuse("the file is empty");
      if (this.file.size > config.maxBytes) {
        throw refuse(`larger than the ${formatBytes(config.maxBytes)} an upload may have`);
      }
    }

    async hash() {
      const md5 = new window.TumorMapMD5();
      for (let start = 0; start < this.file.size; start += HASH_SLICE) {
        if (this.cancelled) throw new Error("cancelled");
        const slice = this.file.slice(start, Math.min(start + HASH_SLICE, this.file.size));
        md5.update(new Uint8Array(await slice.arrayBuffer()));
        this.setState("hashing", `computing checksum ${Math.floor((start / this.file.size) * 100)}%`);
      }
      return md5.hex();
    }

    async resumeOrCreate() {
      const stored = recall(this.file);
      if (stored && stored.id) {
        try {
          const upload = await api(`/api/uploads/${stored.id}`);
          if (upload.state === "receiving") {
            this.uploadId = upload.id;
            this.md5 = stored.md5;
            this.offset = upload.offset;
            this.setProgress(this.offset / this.file.size);
            this.setState("resuming", `resuming at ${formatBytes(this.offset)}`);
            return;
          }
        } catch (err) { /* gone or not ours any more: start over */ }
        remember(this.file, null);
      }
      this.setState("hashing", "computing checksum");
      this.md5 = await this.hash();
      const upload = await api(`/api/cohorts/${config.cohort}/uploads`, {
        method: "POST",
        body: { filename: this.file.name, size: this.file.size, md5: this.md5 },
      });
      this.uploadId = upload.id;
      this.offset = upload.offset || 0;
      remember(this.file, { id: upload.id, md5: this.md5 });
    }

    putChunk(start, end) {
      return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        this.xhr = xhr;
        xhr.open("PUT", `/api/uploads/${this.uploadId}`);
        xhr.setRequestHeader("Content-Range", `bytes ${start}-${end - 1}/${this.file.size}`);
        xhr.setRequestHeader("Content-Type", "application/octet-stream");
        xhr.setRequestHeader("Accept", "application/json");
        xhr.setRequestHeader("X-CSRFToken", window.TM.csrfToken());
        xhr.responseType = "json";
        xhr.upload.onprogress = (event) => {
          if (event.lengthComputable) this.setProgress((start + event.loaded) / this.file.size);
        };
        xhr.upload.onload = () => {
          if (end === this.file.size) this.setState("registering", "checking and registering the slide…");
        };
        xhr.onload = () => {
          this.xhr = null;
          const body = xhr.response || {};
          if (xhr.status >= 200 && xhr.status < 300) resolve(body);
          else reject(new window.TM.ApiError(xhr.status, body));
        };
        xhr.onerror = () => {
          this.xhr = null;
          reject(new window.TM.ApiError(0, { code: "network", message: "connection lost" }));
        };
        xhr.onabort = () => {
          this.xhr = null;
          reject(new window.TM.ApiError(0, { code: "aborted", message: "cancelled" }));
        };
        xhr.send(this.file.slice(start, end));
      });
    }

    async sendAll() {
      let failures = 0;
      while (this.offset < this.file.size) {
        if (this.cancelled) throw new Error("cancelled");
        const start = this.offset;
        const end = Math.min(start + config.chunkBytes, this.file.size);
        this.setState("uploading", `uploading ${formatBytes(start)} of ${formatBytes(this.file.size)}`);
        try {
          const upload = await this.putChunk(start, end);
          this.offset = upload.offset;
          this.setProgress(this.offset / this.file.size);
          failures = 0;
          if (upload.state === "complete") return upload;
        } catch (err) {
          if (this.cancelled) throw new Error("cancelled");
          if (err.code === "upload_offset_mismatch" && err.body.details) {
            this.offset = err.body.details.offset; // the server knows better: go on from there
            continue;
          }
          const transient = err.status === 0 || err.status >= 500 || err.code === "conflict";
          if (!transient || ++failures > CHUNK_RETRIES) throw err;
          this.setState("waiting", `${err.message}; trying again (${failures}/${CHUNK_RETRIES})`);
          await sleep(RETRY_BASE_MS * 2 ** (failures - 1));
          try {
            this.offset = (await api(`/api/uploads/${this.uploadId}`)).offset;
          } catch (lookup) { /* still unreachable: the next attempt says so */ }
        }
      }
      return api(`/api/uploads/${this.uploadId}`);
    }

    async run() {
      this.retryButton.hidden = true;
      this.cancelButton.hidden = false;
      try {
        this.check();
        await this.resumeOrCreate();
        const upload = await this.sendAll();
        if (upload.state !== "complete") throw new Error(upload.error || `upload ${upload.state}`);
        remember(this.file, null);
        this.setProgress(1);
        this.setState("done", "uploaded and registered");
        this.cancelButton.hidden = true;
        return true;
      } catch (err) {
        if (this.cancelled) {
          this.setState("failed", "cancelled");
        } else {
          this.setState("failed", err.message || String(err));
          this.retryButton.hidden = Boolean(err.permanent);
          // A refused file (checksum, unreadable) must be sent again from scratch.
          if (err.status && err.status < 500 && err.code !== "network") remember(this.file, null);
        }
        this.cancelButton.hidden = true;
        return false;
      }
    }

    retry() {
      this.cancelled = false;
      this.setState("waiting", "waiting");
      enqueue(this);
    }

    async cancel() {
      this.cancelled = true;
      if (this.xhr) this.xhr.abort();
      const index = queue.indexOf(this);
      if (index >= 0) { queue.splice(index, 1); this.setState("failed", "cancelled"); }
      if (this.uploadId) {
        try { await api(`/api/uploads/${this.uploadId}`, { method: "DELETE" }); }
        catch (err) { /* already finished or gone */ }
        remember(this.file, null);
      }
      this.retryButton.hidden = false;
      this.cancelButton.hidden = true;
    }
  }

  function enqueue(upload) {
    queue.push(upload);
    pump();
  }

  function pump() {
    while (running < PARALLEL && queue.length) {
      const upload = queue.shift();
      running++;
      upload.run().then((ok) => {
        running--;
        if (ok) changed();
        pump();
      });
    }
  }

  let refreshTimer = null;
  function changed() {
    // One table refresh for a burst of finished files.
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => document.dispatchEvent(new CustomEvent("tm:slides-changed")), 300);
  }

  function addFiles(files) {
    for (const file of files) enqueue(new FileUpload(file));
  }

  // -- slide files: drop zone and file input ---------------------------------------------------
  const drop = document.getElementById("slide-drop");
  const input = document.getElementById("slide-files");
  if (drop && input) {
    input.addEventListener("change", () => {
      addFiles(Array.from(input.files));
      input.value = "";
    });
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (event) => {
        event.preventDefault();
        drop.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      drop.addEventListener(type, () => drop.classList.remove("dragging"));
    }
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      addFiles(Array.from(event.dataTransfer.files));
    });
    // A file dropped next to the zone must not make the browser leave the page to show it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  // -- label file ------------------------------------------------------------------------------
  const labelForm = document.getElementById("label-form");
  if (labelForm) {
    const status = document.getElementById("label-status");
    labelForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = document.getElementById("label-file").files[0];
      if (!file) return;
      const form = new FormData();
      form.append("file", file, file.name);
      say(status, `applying ${file.name}…`);
      try {
        const report = await api(`/api/cohorts/${config.cohort}/label-file`, { method: "POST", body: form });
        const labels = Object.entries(report.labels || {}).map(([k, v]) => `${k} ${v}`).join(", ");
        const splits = Object.entries(report.splits || {}).map(([k, v]) => `${k} ${v}`).join(", ");
        const parts = [
          h("p", { class: "ok", text: `${file.name} applied (${report.kind}): ${report.slides} slides, ${report.cases} cases.` }),
          h("p", { text: `Labels: ${labels}. Splits: ${splits}.` }),
        ];
        if ((report.errors || []).length) {
          parts.push(h("ul", { class: "error" },
            report.errors.slice(0, 20).map((e) => h("li", { text: `${e.file}: ${e.message}` }))));
        }
        status.replaceChildren(...parts);
        labelForm.reset();
        document.dispatchEvent(new CustomEvent("tm:slides-changed"));
      } catch (err) {
        say(status, `${file.name}: ${err.message}`, "error");
      }
    });
  }

  // -- contours --------------------------------------------------------------------------------
  const contourForm = document.getElementById("contour-form");
  if (contourForm) {
    const status = document.getElementById("contour-status");
    contourForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const files = Array.from(document.getElementById("contour-files").files);
      if (!files.length) return;
      say(status, "matching files to slides…");
      let slides;
      try {
        slides = await apiAll(`/api/slides/?cohort=${config.cohort}`, Infinity);
      } catch (err) {
        say(status, err.message, "error");
        return;
      }
      const byName = new Map(slides.map((s) => [s.original_filename.toLowerCase(), s]));
      const byStem = new Map();
      for (const s of slides) {
        const stem = s.original_filename.replace(/\.[^.]+$/, "").toLowerCase();
        byStem.set(stem, byStem.has(stem) ? null : s); // ambiguous stems match nothing
      }
      const results = [];
      let imported = 0;
      for (const file of files) {
        const base = file.name.replace(/\.(geo)?json$/i, "").toLowerCase();
        const slide = byName.get(base) || byStem.get(base);
        if (!slide) { results.push([file.name, "matches no slide of this cohort by name", true]); continue; }
        let geojson;
        try { geojson = JSON.parse(await file.text()); }
        catch (err) { results.push([file.name, "is not JSON", true]); continue; }
        const features = geojson.type === "FeatureCollection" ? geojson.features || [] : [geojson];
        if (!features.length) { results.push([file.name, `no contour (nothing to import for ${slide.original_filename})`, false]); continue; }
        try {
          // Importing a file again replaces what the slide had, rather than doubling it.
          const existing = await api(`/api/slides/${slide.id}/annotations`);
          for (const feature of existing.features || []) {
            const id = feature.id || (feature.properties || {}).id;
            if (id) await api(`/api/annotations/${id}`, { method: "DELETE" });
          }
          const created = await api(`/api/slides/${slide.id}/annotations`, { method: "POST", body: geojson });
          imported += created.contours;
          results.push([file.name, `${created.contours} contour(s), ${created.vertices} vertices → ${slide.original_filename}`, false]);
        } catch (err) {
          results.push([file.name, err.message, true]);
        }
      }
      status.replaceChildren(
        h("p", { class: "ok", text: `${imported} contour(s) imported from ${files.length} file(s).` }),
        h("ul", {}, results.map(([name, text, bad]) => h("li", { class: bad ? "error" : "", text: `${name}: ${text}` }))));
      contourForm.reset();
      document.dispatchEvent(new CustomEvent("tm:slides-changed"));
    });
  }
})();
