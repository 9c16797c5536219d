/* The slide viewer: OpenSeadragon on the slide's DeepZoom tiles, a run's tumor map as an image
   layer placed in level-0 coordinates, the pathologist's contours and the map's errors drawn
   as SVG over the slide, a scale bar from the slide's resolution, and a second run side by side
   with synchronised navigation.

   Frames: contours and maps are in level-0 pixels; OpenSeadragon's viewport unit is the slide's
   level-0 width (x and y alike), so a map whose cell (0, 0) starts at level-0 (ox, oy) and
   spans cols * cell px is placed at x = ox / W, y = oy / W, width = cols * cell / W. */
(function () {
  "use strict";
  const { api, apiAll, say } = window.TM;
  const cfg = window.TM.jsonData("viewer-config");
  const OSD = window.OpenSeadragon;
  const SVG_NS = "http://www.w3.org/2000/svg";
  // The scale bar aims at about this many screen pixels.
  const SCALE_BAR_PX = 120;
  // Controls that refetch a map wait this long after the last change (a dragged slider).
  const DEBOUNCE_MS = 200;
  // Map cells are enlarged to at most this many pixels, and the enlarged map to at most this
  // many pixels a side (a canvas of a few MB).
  const MAX_CELL_PX = 8;
  const MAX_CRISP_SIDE = 2048;

  const status = document.getElementById("viewer-status");
  const controls = {
    run: document.getElementById("run-select"),
    compare: document.getElementById("compare-select"),
    colormap: document.getElementById("colormap"),
    opacity: document.getElementById("opacity"),
    threshold: document.getElementById("threshold"),
    hideBelow: document.getElementById("hide-below"),
    contours: document.getElementById("show-contours"),
    mapInfo: document.getElementById("map-info"),
  };
  const state = {
    mode: "map",
    colormap: controls.colormap.value,
    opacity: parseFloat(controls.opacity.value),
    threshold: parseFloat(controls.threshold.value),
    hideBelow: controls.hideBelow.checked,
    contours: controls.contours.checked,
  };
  let truth = null; // the pathologist's FeatureCollection
  const heatmaps = new Map(); // run id -> heatmap of this slide
  const runs = new Map(); // run id -> run summary

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  /* An SVG path of a GeoJSON Polygon or MultiPolygon (rings as subpaths; holes by even-odd). */
  function pathData(geometry) {
    if (!geometry) return "";
    const polygons = geometry.type === "Polygon" ? [geometry.coordinates]
      : geometry.type === "MultiPolygon" ? geometry.coordinates : [];
    let d = "";
    for (const rings of polygons) {
      for (const ring of rings) {
        if (!ring.length) continue;
        d += `M${ring[0][0]} ${ring[0][1]}`;
        for (let i = 1; i < ring.length; i++) d += `L${ring[i][0]} ${ring[i][1]}`;
        d += "Z";
      }
    }
    return d;
  }

  function featureLabel(feature) {
    const props = feature.properties || {};
    const cls = props.classification || {};
    return String(props.label || cls.name || "tumor").toLowerCase();
  }

  function paths(features, attrs, filter = () => true) {
    const group = svg("g");
    for (const feature of features) {
      if (!filter(feature)) continue;
      const d = pathData(feature.geometry);
      if (d) group.append(svg("path", { d, "fill-rule": "evenodd", ...attrs }));
    }
    return group;
  }

  const isTumor = (f) => !["exclusion", "normal"].includes(featureLabel(f));
  const isExclusion = (f) => featureLabel(f) === "exclusion";

  /* The overlay PNG (one pixel per map cell) enlarged by a whole factor without smoothing, as
     an object URL: drawn on the slide, cells keep sharp edges instead of being blurred into
     each other (the canvas smooths whatever it scales). Large maps, whose cells are small on
     screen anyway, are left as they are. */
  async function crispImage(url, cols, rows) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.message || `HTTP ${response.status}`);
    }
    const blob = await response.blob();
    const factor = Math.max(1, Math.min(MAX_CELL_PX, Math.floor(MAX_CRISP_SIDE / Math.max(cols, rows))));
    if (factor === 1) return URL.createObjectURL(blob);
    const bitmap = await createImageBitmap(blob);
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width * factor;
    canvas.height = bitmap.height * factor;
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const enlarged = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    return URL.createObjectURL(enlarged || blob);
  }

  // -- one viewer pane -------------------------------------------------------------------------
  let paneCount = 0;
  class Pane {
    constructor(elementId, labelId, showNavigator) {
      this.id = `p${paneCount++}`;
      this.element = document.getElementById(elementId);
      this.labelBox = document.getElementById(labelId);
      this.heatmap = null;
      this.mapItem = null;
      this.predicted = null; // map contours at the threshold (errors view)
      this.mapRequest = 0;
      this.viewer = OSD({
        id: elementId,
        prefixUrl: document.getElementById("panes").dataset.osdImages,
        tileSources: `/api/slides/${cfg.slide}.dzi`,
        drawer: "canvas",
        showNavigationControl: false,
        showNavigator: showNavigator,
        navigatorPosition: "TOP_RIGHT",
        navigatorAutoFade: false,
        navigatorBackground: "#f4f1f4",
        navigatorSizeRatio: 0.18,
        visibilityRatio: 0.5,
        minZoomImageRatio: 0.8,
        maxZoomPixelRatio: 4,
        animationTime: 0.5,
        gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      });
      this.opened = new Promise((resolve) => this.viewer.addOnceHandler("open", resolve));
      this.viewer.addHandler("open-failed", (event) => say(status, `The slide cannot be opened: ${event.message}`, "error"));
      this.buildOverlay();
      this.buildScaleBar();
      const redraw = () => { this.place(); this.updateScale(); };
      for (const event of ["open", "animation", "animation-finish", "resize", "update-viewport"]) {
        this.viewer.addHandler(event, redraw);
      }
    }

    get slideItem() { return this.viewer.world.getItemAt(0); }

    buildOverlay() {
      this.svg = svg("svg", { class: "contour-layer", "aria-hidden": "true" });
      this.defs = svg("defs");
      this.group = svg("g");
      this.errorsLayer = svg("g", { class: "errors" });
      this.truthLayer = svg("g", { class: "truth" });
      this.group.append(this.errorsLayer, this.truthLayer);
      this.svg.append(this.defs, this.group);
      this.viewer.canvas.append(this.svg);
    }

    buildScaleBar() {
      this.scaleBar = document.createElement("div");
      this.scaleBar.className = "scale-bar";
      this.scaleBar.setAttribute("aria-hidden", "true");
      this.scaleLine = document.createElement("div");
      this.scaleLine.className = "scale-line";
      this.scaleText = document.createElement("span");
      this.scaleBar.append(this.scaleLine, this.scaleText);
      this.viewer.element.append(this.scaleBar);
    }

    /* Keep the SVG's level-0 frame on the slide as it pans and zooms. */
    place() {
      const item = this.slideItem;
      if (!item) return;
      const origin = item.imageToViewerElementCoordinates(new OSD.Point(0, 0));
      const unit = item.imageToViewerElementCoordinates(new OSD.Point(1000, 0));
      const scale = (unit.x - origin.x) / 1000;
      this.group.setAttribute("transform", `translate(${origin.x} ${origin.y}) scale(${scale})`);
    }

    updateScale() {
      const item = this.slideItem;
      if (!item) return;
      const screenPerL0 = item.viewportToImageZoom(this.viewer.viewport.getZoom(true));
      if (!(screenPerL0 > 0)) return;
      const mpp = cfg.mpp;
      const perScreenPx = mpp ? mpp / screenPerL0 : 1 / screenPerL0; // um (or level-0 px) per screen px
      const target = SCALE_BAR_PX * perScreenPx;
      const magnitude = 10 ** Math.floor(Math.log10(target));
      const nice = [5, 2, 1].map((m) => m * magnitude).find((v) => v <= target) || magnitude;
      this.scaleLine.style.width = `${Math.round(nice / perScreenPx)}px`;
      let text;
      if (!mpp) text = `${nice} px`;
      else if (nice >= 1000) text = `${nice / 1000} mm`;
      else text = `${nice >= 1 ? nice : nice.toPrecision(1)} µm`;
      this.scaleText.textContent = text + (mpp && cfg.mppAssumed ? " (assumed resolution)" : "");
    }

    drawTruth() {
      this.truthLayer.replaceChildren();
      if (!truth || !state.contours) return;
      const features = truth.features || [];
      this.truthLayer.append(
        paths(features, { class: "truth-tumor" }, isTumor),
        paths(features, { class: "truth-exclusion" }, isExclusion),
        paths(features, { class: "truth-normal" }, (f) => featureLabel(f) === "normal"));
    }

    /* TP / FP / FN regions: the map's regions at the threshold against the contours, by masks. */
    drawErrors() {
      this.errorsLayer.replaceChildren();
      this.defs.replaceChildren();
      delete this.element.dataset.errors;
      if (state.mode !== "errors" || !this.predicted || !truth) return;
      const W = cfg.width, H = cfg.height;
      const bounds = { x: -W, y: -H, width: 3 * W, height: 3 * H, maskUnits: "userSpaceOnUse" };
      const full = (fill) => svg("rect", { x: -W, y: -H, width: 3 * W, height: 3 * H, fill });
      const tf = truth.features || [];
      const pf = this.predicted.features || [];
      const mask = (name, background, ...layers) => {
        const m = svg("mask", { id: `${this.id}-${name}`, ...bounds });
        m.append(full(background), ...layers);
        this.defs.append(m);
        return `url(#${this.id}-${name})`;
      };
      const inTruth = mask("truth", "black", paths(tf, { fill: "white" }, isTumor), paths(tf, { fill: "black" }, isExclusion));
      const outTruth = mask("not-truth", "white", paths(tf, { fill: "black" }, isTumor), paths(tf, { fill: "white" }, isExclusion));
      const outPred = mask("not-pred", "white", paths(pf, { fill: "black" }));
      const tp = svg("g", { mask: inTruth, class: "tp" });
      tp.append(paths(pf, {}));
      const fp = svg("g", { mask: outTruth, class: "fp" });
      fp.append(paths(pf, {}));
      const fnOuter = svg("g", { mask: outPred });
      const fn = svg("g", { mask: inTruth, class: "fn" });
      fn.append(svg("rect", { x: 0, y: 0, width: W, height: H }));
      fnOuter.append(fn);
      this.errorsLayer.append(tp, fp, fnOuter);
      this.element.dataset.errors = "drawn";
    }

    overlayUrl() {
      const params = new URLSearchParams({ colormap: state.colormap });
      if (state.hideBelow) params.set("threshold", state.threshold.toFixed(2));
      return `${this.heatmap.urls.overlay}?${params}`;
    }

    /* Replace the map layer; the old one goes once the new one is drawn (no flicker). */
    async showMap() {
      await this.opened;
      const request = ++this.mapRequest;
      const old = this.mapItem;
      if (!this.heatmap || state.mode !== "map") {
        if (old) { this.viewer.world.removeItem(old); this.mapItem = null; }
        delete this.element.dataset.map;
        return;
      }
      const hm = this.heatmap;
      const W = cfg.width;
      let url;
      try {
        url = await crispImage(this.overlayUrl(), hm.cols, hm.rows);
      } catch (err) {
        say(status, `The map cannot be shown: ${err.message}`, "error");
        return;
      }
      if (request !== this.mapRequest) { URL.revokeObjectURL(url); return; }
      this.viewer.addTiledImage({
        tileSource: { type: "image", url, buildPyramid: false },
        x: hm.l0_origin[0] / W,
        y: hm.l0_origin[1] / W,
        width: (hm.cols * hm.l0_cell_size) / W,
        opacity: state.opacity,
        success: (event) => {
          URL.revokeObjectURL(url);
          if (request !== this.mapRequest) { this.viewer.world.removeItem(event.item); return; }
          if (this.mapItem && this.mapItem !== event.item) this.viewer.world.removeItem(this.mapItem);
          this.mapItem = event.item;
          this.element.dataset.map = String(hm.id); // which map is on screen (tests, styles)
        },
        error: (event) => say(status, `The map cannot be shown: ${event.message || "load failed"}`, "error"),
      });
    }

    setOpacity(value) {
      if (this.mapItem) this.mapItem.setOpacity(value);
    }

    async loadPredicted() {
      if (!this.heatmap || state.mode !== "errors") { this.predicted = null; this.drawErrors(); return; }
      const url = `${this.heatmap.urls.contours}?threshold=${state.threshold.toFixed(2)}`;
      try {
        this.predicted = await api(url);
      } catch (err) {
        this.predicted = null;
        say(status, `Map contours: ${err.message}`, "error");
      }
      this.drawErrors();
    }

    setHeatmap(heatmap, label) {
      this.heatmap = heatmap;
      this.labelBox.textContent = label || "";
      this.showMap();
      this.loadPredicted();
    }

    refresh() {
      this.drawTruth();
      this.showMap();
      this.loadPredicted();
    }
  }

  // -- synchronised navigation -----------------------------------------------------------------
  function synchronise(a, b) {
    let leader = null;
    const follow = (from, to) => () => {
      if (leader && leader !== from) return;
      leader = from;
      to.viewer.viewport.zoomTo(from.viewer.viewport.getZoom());
      to.viewer.viewport.panTo(from.viewer.viewport.getCenter());
      leader = null;
    };
    a.viewer.addHandler("viewport-change", follow(a, b));
    b.viewer.addHandler("viewport-change", follow(b, a));
  }

  // -- page wiring -----------------------------------------------------------------------------
  const paneA = new Pane("osd-a", "pane-a-label", true);
  let paneB = null;
  const panes = () => (paneB && !document.getElementById("pane-b").hidden ? [paneA, paneB] : [paneA]);

  function runLabel(runId) {
    const run = runs.get(runId);
    if (!run) return `Run ${runId}`;
    return `Run ${run.id} · α ${run.alpha} · β ${run.beta}`;
  }

  function updateDownloads() {
    const hm = paneA.heatmap;
    const tiff = document.getElementById("dl-tiff");
    const contours = document.getElementById("dl-map-contours");
    for (const [link, href, name] of [
      [tiff, hm && hm.urls.tiff, null],
      [contours, hm && `${hm.urls.contours}?threshold=${state.threshold.toFixed(2)}`,
       hm && `map-run${hm.run}-slide${cfg.slide}-p${state.threshold.toFixed(2)}.geojson`],
    ]) {
      if (href) {
        link.href = href;
        link.removeAttribute("aria-disabled");
        if (name) link.setAttribute("download", name);
      } else {
        link.removeAttribute("href");
        link.setAttribute("aria-disabled", "true");
      }
    }
  }

  function describeMap(hm) {
    if (!hm) return "No map of this slide yet: maps are inferred after a run trains.";
    return `${hm.cols} × ${hm.rows} cells of ${Math.round(hm.l0_cell_size)} px` +
      (cfg.mpp ? ` (${(hm.l0_cell_size * cfg.mpp).toFixed(0)} µm)` : "") +
      (hm.epoch ? `, best epoch ${hm.epoch}` : "");
  }

  function remember() {
    const params = new URLSearchParams(window.location.search);
    for (const [key, value] of [["run", controls.run.value], ["compare", controls.compare.value]]) {
      if (value) params.set(key, value); else params.delete(key);
    }
    const query = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (query ? `?${query}` : ""));
    // Neighbouring slides open with the same runs.
    document.querySelectorAll("a[data-keep-run]").forEach((a) => {
      a.search = query;
    });
  }

  function selectRun() {
    const runId = parseInt(controls.run.value, 10);
    const hm = heatmaps.get(runId) || null;
    paneA.setHeatmap(hm, hm ? runLabel(runId) : "");
    controls.mapInfo.textContent = describeMap(hm);
    updateDownloads();
    remember();
  }

  function selectCompare() {
    const runId = parseInt(controls.compare.value, 10);
    const section = document.getElementById("pane-b");
    if (!runId) {
      section.hidden = true;
      document.getElementById("panes").classList.remove("split");
      remember();
      return;
    }
    section.hidden = false;
    document.getElementById("panes").classList.add("split");
    if (!paneB) {
      paneB = new Pane("osd-b", "pane-b-label", false);
      synchronise(paneA, paneB);
      paneB.opened.then(() => {
        paneB.viewer.viewport.zoomTo(paneA.viewer.viewport.getZoom(), null, true);
        paneB.viewer.viewport.panTo(paneA.viewer.viewport.getCenter(), true);
        paneB.drawTruth();
      });
    }
    paneB.setHeatmap(heatmaps.get(runId), runLabel(runId));
    remember();
  }

  function fillSelects() {
    const ids = [...heatmaps.keys()].sort((a, b) => b - a);
    const option = (value, text) => new Option(text, value);
    controls.run.replaceChildren(...(ids.length ? ids.map((id) => option(id, runLabel(id)))
                                                : [option("", "no map yet")]));
    controls.compare.replaceChildren(option("", "nothing"), ...ids.map((id) => option(id, runLabel(id))));
    controls.run.disabled = !ids.length;
    controls.compare.disabled = ids.length < 2;
    if (cfg.run && heatmaps.has(cfg.run)) controls.run.value = String(cfg.run);
    if (cfg.compare && heatmaps.has(cfg.compare) && cfg.compare !== cfg.run) {
      controls.compare.value = String(cfg.compare);
    }
  }

  async function load() {
    try {
      const [maps, annotations] = await Promise.all([
        apiAll(`/api/heatmaps/?slide=${cfg.slide}`),
        api(`/api/slides/${cfg.slide}/annotations`),
      ]);
      truth = annotations;
      const runIds = [...new Set(maps.map((m) => m.run))];
      await Promise.all(runIds.map(async (id) => {
        try { runs.set(id, await api(`/api/runs/${id}/`)); } catch (err) { /* label without */ }
      }));
      for (const m of maps) heatmaps.set(m.run, m);
      fillSelects();
      await paneA.opened;
      paneA.drawTruth();
      selectRun();
      if (controls.compare.value) selectCompare();
      say(status, maps.length ? `${maps.length} map${maps.length === 1 ? "" : "s"} of this slide.` : "No map of this slide yet.");
    } catch (err) {
      say(status, err.message, "error");
    }
  }

  // -- controls --------------------------------------------------------------------------------
  controls.run.addEventListener("change", selectRun);
  controls.compare.addEventListener("change", selectCompare);
  const refetchMaps = debounce(() => panes().forEach((p) => p.showMap()), DEBOUNCE_MS);
  const refetchErrors = debounce(() => panes().forEach((p) => p.loadPredicted()), DEBOUNCE_MS);

  controls.colormap.addEventListener("change", () => { state.colormap = controls.colormap.value; refetchMaps(); });
  controls.opacity.addEventListener("input", () => {
    state.opacity = parseFloat(controls.opacity.value);
    document.getElementById("opacity-value").textContent = state.opacity.toFixed(2);
    panes().forEach((p) => p.setOpacity(state.opacity));
  });
  controls.threshold.addEventListener("input", () => {
    state.threshold = parseFloat(controls.threshold.value);
    document.getElementById("threshold-value").textContent = state.threshold.toFixed(2);
    updateDownloads();
    if (state.hideBelow) refetchMaps();
    refetchErrors();
  });
  controls.hideBelow.addEventListener("change", () => { state.hideBelow = controls.hideBelow.checked; refetchMaps(); });
  controls.contours.addEventListener("change", () => {
    state.contours = controls.contours.checked;
    panes().forEach((p) => p.drawTruth());
  });
  document.querySelectorAll('input[name="mode"]').forEach((radio) => {
    radio.addEventListener("change", () => {
      if (!radio.checked) return;
      state.mode = radio.value;
      document.body.dataset.viewMode = state.mode;
      document.querySelectorAll("#legend li").forEach((li) => {
        li.hidden = !li.dataset.mode.split(" ").includes(state.mode);
      });
      panes().forEach((p) => p.refresh());
    });
  });
  document.querySelectorAll("#legend li").forEach((li) => { li.hidden = !li.dataset.mode.includes("map"); });

  const zoomBy = (factor) => {
    paneA.viewer.viewport.zoomBy(factor);
    paneA.viewer.viewport.applyConstraints();
  };
  document.getElementById("zoom-in").addEventListener("click", () => zoomBy(1.6));
  document.getElementById("zoom-out").addEventListener("click", () => zoomBy(1 / 1.6));
  document.getElementById("zoom-home").addEventListener("click", () => paneA.viewer.viewport.goHome());

  load();
})();
