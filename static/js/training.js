/* The training page: queue a sweep of (alpha, beta) configurations (POST /api/sweeps/), and the
   runs' live progress, polled every 2 s without reloading (GET /api/runs/?cohort=, then each
   changed run's history), with cancel / retry buttons and small SVG curves of the history.
   The run detail page uses the same cards for its one run. */
(function () {
  "use strict";
  const { api, apiAll, h, formatDuration, formatNumber, say } = window.TM;
  const cfg = window.TM.jsonData("training-config");
  if (!cfg) return;

  const POLL_MS = 2000;
  // When nothing moves, evaluations are looked for only every this many polls.
  const IDLE_EVAL_POLLS = 15;
  // A succeeded run whose sweep evaluates is shown "being evaluated" this long at most.
  const EVAL_WAIT_S = 30 * 60;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const runsBox = document.getElementById("runs");
  const announcer = document.getElementById("run-announcer");
  const pollStatus = document.getElementById("poll-status");
  const cards = new Map(); // run id -> {root, parts, run, historyKey}
  const evaluations = new Map(); // run id -> evaluation (test split)
  const sweeps = new Map(); // sweep id -> sweep
  let polls = 0;

  // -- the sweep form ----------------------------------------------------------------------
  const form = document.getElementById("sweep-form");
  if (form) {
    const boxes = Array.from(form.querySelectorAll('input[name="config"]'));
    const queueButton = document.getElementById("queue-button");
    const status = document.getElementById("sweep-status");
    const updateCount = () => {
      const n = boxes.filter((b) => b.checked).length;
      queueButton.textContent = n === 1 ? "Queue 1 run" : `Queue ${n} runs`;
      queueButton.disabled = n === 0;
    };
    form.addEventListener("change", updateCount);
    form.querySelectorAll("[data-select]").forEach((button) => {
      button.addEventListener("click", () => {
        const mode = button.dataset.select;
        for (const box of boxes) {
          box.checked = mode === "all" || (mode === "beta0" && parseFloat(box.dataset.beta) === 0);
        }
        updateCount();
      });
    });
    updateCount();

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const grid = boxes.filter((b) => b.checked)
        .map((b) => [parseFloat(b.dataset.alpha), parseFloat(b.dataset.beta)]);
      if (!grid.length) { say(status, "Choose at least one configuration.", "error"); return; }
      const settings = {};
      for (const name of cfg.settings) {
        const field = form.elements[name];
        if (!field || field.value === "") continue;
        if (field.type === "number") {
          if (!field.checkValidity()) {
            say(status, `${field.labels[0].textContent}: ${field.validationMessage}`, "error");
            field.focus();
            return;
          }
          settings[name] = field.step === "1" ? parseInt(field.value, 10) : parseFloat(field.value);
        } else {
          settings[name] = field.value;
        }
      }
      queueButton.disabled = true;
      say(status, "Queueing…");
      try {
        const sweep = await api("/api/sweeps/", {
          method: "POST",
          body: { cohort: cfg.cohort, grid, settings, evaluate: form.elements.evaluate.checked,
                  name: form.elements.name.value },
        });
        sweeps.set(sweep.id, sweep);
        say(status, `Queued ${sweep.runs_total} run${sweep.runs_total === 1 ? "" : "s"} (sweep ${sweep.id}).`, "ok");
        poll(true);
      } catch (err) {
        say(status, err.message, "error");
      } finally {
        updateCount();
      }
    });
  }

  // -- curves ------------------------------------------------------------------------------
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* A small line chart: x = epoch, one polyline per series with points at each epoch. */
  function chart(title, series, { yMin = 0, yMax = null } = {}) {
    const W = 250, H = 130, L = 34, R = 8, T = 18, B = 30;
    const points = series.flatMap((s) => s.points);
    const xMax = Math.max(2, ...points.map((p) => p[0]));
    let top = yMax;
    if (top === null) top = Math.max(...points.map((p) => p[1]), 1e-6) * 1.1;
    const x = (v) => L + ((v - 1) / (xMax - 1)) * (W - L - R);
    const y = (v) => T + (1 - (v - yMin) / (top - yMin)) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                              class: "chart" });
    const summary = series.map((s) => {
      const last = s.points[s.points.length - 1];
      return last ? `${s.name} ${formatNumber(last[1])} at epoch ${last[0]}` : `${s.name} none`;
    }).join("; ");
    root.append(svg("title", {}, `${title}: ${summary}`));
    root.append(svg("text", { x: L, y: 12, class: "chart-title" }, title));
    root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    for (const v of [yMin, (yMin + top) / 2, top]) {
      root.append(svg("text", { x: L - 4, y: y(v) + 3, class: "tick", "text-anchor": "end" },
                      v >= 10 ? v.toFixed(0) : v.toFixed(2)));
    }
    const step = Math.max(1, Math.ceil(xMax / 5));
    for (let e = 1; e <= xMax; e += step) {
      root.append(svg("text", { x: x(e), y: H - B + 12, class: "tick", "text-anchor": "middle" }, e));
    }
    let legendX = L;
    for (const s of series) {
      const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1]));
      if (pts.length > 1) {
        root.append(svg("polyline", { points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" "),
                                      fill: "none", stroke: s.color, "stroke-width": 1.8 }));
      }
      for (const p of pts) root.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.4, fill: s.color }));
      root.append(svg("rect", { x: legendX, y: H - 8, width: 9, height: 3, fill: s.color }));
      root.append(svg("text", { x: legendX + 12, y: H - 4, class: "legend" }, s.name));
      legendX += 12 + s.name.length * 5.6 + 10;
    }
    return root;
  }

  function curves(history) {
    if (!history || !history.length) {
      return [h("p", { class: "muted small", text: "Curves appear after the first epoch." })];
    }
    const series = (key, name, color) => ({
      name, color,
      points: history.filter((e) => e[key] !== null && e[key] !== undefined).map((e) => [e.epoch, e[key]]),
    });
    const loss = [series("train_loss", "train", "#8e2c6b"), series("val_loss", "validation", "#2a7ab0")]
      .filter((s) => s.points.length);
    const charts = loss.length ? [chart("Loss by epoch", loss)] : [];
    const auc = [series("val_slide_auc", "slide AUC", "#2f8f3a"), series("val_pixel_auc", "pixel AUC", "#c46a00")]
      .filter((s) => s.points.length);
    if (auc.length) charts.push(chart("Validation AUC by epoch", auc, { yMin: 0, yMax: 1 }));
    return charts;
  }

  // -- run cards ---------------------------------------------------------------------------
  function createCard(run) {
    const parts = {
      title: h("a", { href: `/runs/${run.id}/`, text: `α ${run.alpha} · β ${run.beta}` }),
      meta: h("span", { class: "muted small" }),
      badge: h("span", { class: "badge" }),
      bar: h("progress", { max: 100, value: 0, "aria-label": `Progress of run ${run.id}` }),
      pct: h("span", { class: "pct" }),
      figures: h("p", { class: "figures small" }),
      evaluation: h("p", { class: "evaluation small" }),
      error: h("p", { class: "error small", hidden: true }),
      curves: h("div", { class: "curves" }),
      cancel: h("button", { type: "button", class: "secondary small", text: "Cancel",
                            onclick: () => act(run.id, "cancel") }),
      retry: h("button", { type: "button", class: "secondary small", text: "Retry",
                           onclick: () => act(run.id, "retry") }),
      links: h("span", { class: "links small" }),
    };
    if (!cfg.canManage) { parts.cancel.hidden = true; parts.retry.hidden = true; }
    const root = h("article", { class: "run-card", id: `run-${run.id}`, "data-run": String(run.id) },
      h("header", {}, h("h3", {}, parts.title), parts.badge, parts.meta),
      h("div", { class: "progress-row" }, parts.bar, parts.pct),
      parts.figures, parts.evaluation, parts.error, parts.curves,
      h("div", { class: "actions" }, parts.cancel, parts.retry, parts.links));
    return { root, parts, run: null, historyKey: null };
  }

  function describeProgress(run) {
    const p = run.progress || {};
    const bits = [];
    if (p.epoch) bits.push(`epoch ${p.epoch}/${p.epochs}`);
    if (p.step && run.status === "running") bits.push(`step ${p.step}/${p.steps}`);
    if (p.loss !== undefined && p.loss !== null) bits.push(`loss ${formatNumber(p.loss)}`);
    if (p.patches_per_s) bits.push(`${p.patches_per_s} patches/s`);
    if (run.status === "running") bits.push(`ETA ${formatDuration(p.eta_s)}`);
    if (run.status === "queued") bits.push(run.attempts ? "queued again" : "waiting for a GPU worker");
    if (run.duration_s) bits.push(`took ${formatDuration(run.duration_s)}`);
    if (run.device) bits.push(run.device);
    return bits.join(" · ");
  }

  function fraction(run) {
    if (run.status === "succeeded") return 1;
    const p = run.progress || {};
    return typeof p.fraction === "number" ? p.fraction : 0;
  }

  function describeEvaluation(run) {
    const e = evaluations.get(run.id);
    if (e) {
      return `Test AUC: tissue ${formatNumber(e.auc_tissue)} · with background ${formatNumber(e.auc_all)}` +
             ` · ${e.n_slides} slide${e.n_slides === 1 ? "" : "s"}`;
    }
    const sweep = sweeps.get(run.sweep);
    if (run.status === "succeeded" && sweep && sweep.evaluate) {
      const age = (Date.now() - Date.parse(run.finished_at)) / 1000;
      return age < EVAL_WAIT_S ? "Inferring maps and evaluating…" : "Not evaluated.";
    }
    return "";
  }

  function updateCard(card, run) {
    const { parts } = card;
    const previous = card.run;
    card.run = run;
    card.root.dataset.status = run.status;
    parts.badge.className = `badge status-${run.status}`;
    parts.badge.textContent = run.cancel_requested && run.status === "running" ? "cancelling" : run.status;
    parts.meta.textContent = `run ${run.id}${run.sweep ? ` · sweep ${run.sweep}` : ""}`;
    const pct = Math.round(fraction(run) * 100);
    parts.bar.value = pct;
    parts.bar.setAttribute("aria-valuetext", `${pct}%`);
    parts.pct.textContent = `${pct}%`;
    parts.figures.textContent = describeProgress(run);
    parts.evaluation.textContent = describeEvaluation(run);
    parts.error.hidden = !run.error;
    parts.error.textContent = run.error || "";
    if (cfg.canManage) {
      parts.cancel.hidden = !["queued", "running"].includes(run.status) || run.cancel_requested;
      parts.retry.hidden = !["failed", "cancelled"].includes(run.status);
    }
    const links = cfg.run ? [] : [h("a", { href: `/runs/${run.id}/`, text: "Details and maps" })];
    if (evaluations.has(run.id)) {
      links.push(h("a", { href: `/cohorts/${run.cohort}/report/`, text: "Report" }));
    }
    if (parts.links.childElementCount !== links.length) parts.links.replaceChildren(...links);
    if (previous && previous.status !== run.status && announcer) {
      say(announcer, `Run ${run.id} (α ${run.alpha}, β ${run.beta}) is ${run.status}.`);
    }
  }

  function updateHistory(card, detail) {
    card.parts.curves.replaceChildren(...curves(detail.history));
    card.historyKey = historyKey(detail);
    if (detail.log_tail !== undefined) {
      const log = document.getElementById("log-tail");
      if (log) log.textContent = detail.log_tail || "(empty)";
    }
  }

  const historyKey = (run) => `${run.status}:${run.epochs_completed}`;

  async function act(runId, action) {
    const card = cards.get(runId);
    const button = card.parts[action];
    button.disabled = true;
    try {
      const run = await api(`/api/runs/${runId}/${action}`, { method: "POST" });
      updateCard(card, run);
      updateHistory(card, run);
      say(announcer, `Run ${runId}: ${action === "cancel" ? "cancel requested" : "queued again"}.`);
    } catch (err) {
      card.parts.error.hidden = false;
      card.parts.error.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  // -- polling -----------------------------------------------------------------------------
  async function loadRuns() {
    if (cfg.run) return [await api(`/api/runs/${cfg.run}/`)];
    return apiAll(`/api/runs/?cohort=${cfg.cohort}`, 200);
  }

  function needsEvaluations(runs) {
    return runs.some((run) => {
      if (["queued", "running"].includes(run.status)) return true;
      if (run.status !== "succeeded" || evaluations.has(run.id)) return false;
      const sweep = sweeps.get(run.sweep);
      return sweep && sweep.evaluate && (Date.now() - Date.parse(run.finished_at)) / 1000 < EVAL_WAIT_S;
    });
  }

  async function loadEvaluations() {
    const url = cfg.run ? `/api/evaluations/?run=${cfg.run}&split=test`
                        : `/api/evaluations/?cohort=${cfg.cohort}&split=test`;
    for (const e of await apiAll(url, 1000)) evaluations.set(e.run, e);
  }

  async function loadSweeps(runs) {
    const missing = [...new Set(runs.map((r) => r.sweep).filter((id) => id && !sweeps.has(id)))];
    if (!missing.length) return;
    if (cfg.run) {
      for (const id of missing) sweeps.set(id, await api(`/api/sweeps/${id}/`));
    } else {
      for (const s of await apiAll(`/api/sweeps/?cohort=${cfg.cohort}`, 1000)) sweeps.set(s.id, s);
    }
  }

  let timer = null;
  let busy = false;
  async function poll(force = false) {
    clearTimeout(timer);
    if (busy) return;
    if (document.hidden && !force) { timer = setTimeout(poll, POLL_MS); return; }
    busy = true;
    try {
      const runs = await loadRuns();
      await loadSweeps(runs);
      if (polls % IDLE_EVAL_POLLS === 0 || needsEvaluations(runs)) await loadEvaluations();
      polls++;
      render(runs);
      if (pollStatus) pollStatus.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (pollStatus) pollStatus.textContent = `update failed (${err.message}); retrying`;
    } finally {
      busy = false;
      timer = setTimeout(poll, POLL_MS);
    }
  }

  function render(runs) {
    if (!runs.length) {
      runsBox.replaceChildren(h("p", { class: "muted", text: "No run yet." }));
      cards.clear();
      return;
    }
    if (!cards.size) runsBox.replaceChildren();
    const details = [];
    runs.forEach((run, index) => {
      let card = cards.get(run.id);
      if (!card) {
        card = createCard(run);
        cards.set(run.id, card);
      }
      // Keep the API's order (newest first) without re-inserting cards that are in place,
      // so that a focused button keeps its focus.
      if (runsBox.children[index] !== card.root) runsBox.insertBefore(card.root, runsBox.children[index] || null);
      updateCard(card, run);
      if (run.history !== undefined) updateHistory(card, run);
      else if (card.historyKey !== historyKey(run)) details.push(card);
    });
    for (const card of details) {
      api(`/api/runs/${card.run.id}/`).then((detail) => updateHistory(card, detail)).catch(() => {});
    }
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(true); });
  poll(true);
})();
