// The status page: reads GET /api/stats (cached by the service: no Feishu call per view) and renders it.
// API data is written with textContent and createElement only: error texts come from workers.
"use strict";

(() => {
  const KEY_STORAGE = "task-manager-api-key";
  const REFRESH_MS = 15000;
  const STATUSES = ["PENDING", "PROCESSING", "SUCCESS", "FAILED", "CANCELLED"];
  const LONG_ERROR = 160;
  const SVG = "http://www.w3.org/2000/svg";
  const byId = (id) => document.getElementById(id);

  let timer = null;
  let loading = false;
  let again = false; // a refresh asked for while one was loading: run once more after it
  let signedOut = false;
  let session = 0; // bumped on sign-out, so an answer fetched with the old key is dropped
  let lastUpdate = null;
  let pending = null; // the bulk action awaiting Confirm: {action, status, matched}

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.detail !== undefined ? String(body.detail) : `HTTP ${status}`);
      this.status = status;
    }
  }

  async function api(method, path) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers["X-API-Key"] = key;
    const response = await fetch(path, { method, headers, cache: "no-store", credentials: "omit" });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  function two(n) {
    return String(n).padStart(2, "0");
  }

  function when(iso) {
    if (!iso) return "—";
    const t = new Date(iso);
    return `${t.getFullYear()}-${two(t.getMonth() + 1)}-${two(t.getDate())} ${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function number(n) {
    return n === null || n === undefined ? "—" : Number(n).toLocaleString("en");
  }

  // ---- the figures ------------------------------------------------------------------------------

  function renderCounts(stats) {
    const tiles = byId("counts");
    const names = [...STATUSES, ...Object.keys(stats.counts).filter((s) => !STATUSES.includes(s))];
    tiles.replaceChildren(
      ...names.map((status) => {
        const n = stats.counts[status] ?? 0;
        const tile = el("div", null, { class: `tile ${status.toLowerCase()}`, "data-status": status, "data-count": n });
        tile.append(el("span", number(n), { class: "count" }), el("span", status, { class: "label" }));
        return tile;
      }),
    );
    byId("counts-as-of").textContent = when(stats.counts_as_of);
  }

  function renderQueue(stats) {
    const depth = stats.queue_depth;
    const threshold = stats.replenish_threshold;
    byId("queue-name").textContent = stats.queue;
    const depthNode = byId("queue-depth");
    depthNode.textContent = depth === null ? "unknown" : number(depth);
    depthNode.dataset.value = depth === null ? "" : String(depth);
    const thresholdNode = byId("queue-threshold");
    thresholdNode.textContent = number(threshold);
    thresholdNode.dataset.value = String(threshold);
    const scale = Math.max(depth || 0, threshold || 0, 1);
    byId("queue-fill").style.width = `${(100 * (depth || 0)) / scale}%`;
    byId("queue-fill").classList.toggle("low", depth !== null && depth < threshold);
    const mark = byId("queue-mark");
    mark.style.left = `${(100 * threshold) / scale}%`;
    const error = byId("queue-error");
    error.hidden = !stats.queue_error;
    error.textContent = stats.queue_error ? `${stats.queue_error.error}: ${stats.queue_error.detail}` : "";
    let next = when(stats.next_replenish);
    if (!stats.next_replenish) next = "not timed by this process (SCHEDULER_ENABLED=false, or another one runs it)";
    byId("next-replenish").textContent = next;
  }

  function renderBacklog(stats) {
    const backlog = stats.backlog;
    byId("backlog-none").hidden = backlog !== null;
    byId("backlog").hidden = backlog === null;
    if (!backlog) return;
    byId("backlog-depth").textContent = number(backlog.depth);
    byId("backlog-depth").dataset.value = String(backlog.depth);
    byId("backlog-age").textContent = backlog.oldest_age_seconds === null ? "none waits" : duration(backlog.oldest_age_seconds);
    byId("backlog-refused").textContent = number(backlog.refused);
    byId("backlog-refused").classList.toggle("bad", backlog.refused > 0);
  }

  function renderCycles(stats) {
    const cycles = stats.recent_cycles;
    byId("cycles-none").hidden = cycles.length > 0;
    for (const id of ["chart", "cycles-table"]) byId(id).hidden = cycles.length === 0;
    byId("cycles").tBodies[0].replaceChildren(
      ...cycles.map((cycle) => {
        const row = el("tr", null, { "data-started-at": cycle.started_at, "data-outcome": cycle.outcome });
        const depth = `${number(cycle.depth_before)} → ${number(cycle.depth_after)}`;
        const outcome = el("td", cycle.outcome, { "data-field": "outcome", class: cycle.outcome });
        if (cycle.error) outcome.append(el("div", cycle.error, { class: "error-text" }));
        row.append(
          el("td", when(cycle.started_at), { "data-field": "when" }),
          el("td", depth, { "data-field": "depth", "data-before": cycle.depth_before ?? "", "data-after": cycle.depth_after ?? "" }),
          el("td", number(cycle.published), { "data-field": "published", "data-value": cycle.published }),
          el("td", number(cycle.failed), { "data-field": "failed", "data-value": cycle.failed }),
          outcome,
        );
        return row;
      }),
    );
    renderChart(cycles.slice().reverse());
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  }

  function renderChart(cycles) {
    const chart = byId("depth-chart");
    const width = 600;
    const height = 140;
    const pad = 10;
    const values = cycles.flatMap((c) => [c.depth_before, c.depth_after, c.threshold]).filter((v) => v !== null);
    const top = Math.max(1, ...values);
    const x = (i) => (cycles.length < 2 ? width / 2 : pad + (i * (width - 2 * pad)) / (cycles.length - 1));
    const y = (v) => height - pad - ((height - 2 * pad) * v) / top;
    const parts = [svg("rect", { x: 0, y: 0, width, height, class: "frame" })];
    const threshold = cycles.length ? cycles[cycles.length - 1].threshold : null;
    if (threshold !== null) {
      parts.push(svg("line", { x1: 0, x2: width, y1: y(threshold), y2: y(threshold), class: "threshold" }));
    }
    for (const series of ["depth_before", "depth_after"]) {
      const points = cycles.map((c, i) => [i, c[series]]).filter(([, v]) => v !== null);
      const cls = series === "depth_before" ? "before" : "after";
      if (points.length > 1) {
        const path = points.map(([i, v]) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
        parts.push(svg("polyline", { points: path, class: `series ${cls}` }));
      }
      for (const [i, v] of points) parts.push(svg("circle", { cx: x(i), cy: y(v), r: 3, class: `dot ${cls}` }));
    }
    chart.dataset.points = String(cycles.length);
    byId("chart-scale").textContent = `(scale 0 to ${number(top)})`;
    chart.replaceChildren(...parts);
  }

  function renderFeishu(stats) {
    const feishu = stats.feishu;
    byId("feishu-none").hidden = feishu !== null;
    byId("feishu-figures").hidden = feishu === null;
    if (!feishu) return;
    byId("feishu-since").textContent = when(feishu.since);
    const endpoints = [...new Set([...Object.keys(feishu.calls), ...Object.keys(feishu.rate_limited)])].sort();
    byId("feishu").tBodies[0].replaceChildren(
      ...endpoints.map((endpoint) => {
        const limited = feishu.rate_limited[endpoint] || 0;
        const row = el("tr", null, { "data-endpoint": endpoint });
        row.append(
          el("td", endpoint),
          el("td", number(feishu.calls[endpoint] || 0), { "data-field": "calls" }),
          el("td", number(limited), { "data-field": "rate-limited", class: limited ? "bad" : "" }),
        );
        return row;
      }),
    );
  }

  function renderFailures(stats) {
    const failures = stats.recent_failures;
    byId("failures-none").hidden = failures.length > 0;
    byId("failures").replaceChildren(
      ...failures.map((failure) => {
        const item = el("li", null, { "data-record-id": failure.record_id });
        const head = el("div", null, { class: "failure-head" });
        head.append(
          el("code", failure.record_id),
          el("span", ` attempts ${failure.attempts}, finished ${when(failure.finished_at)}`),
        );
        item.append(head);
        if (failure.identifier) item.append(el("div", failure.identifier, { class: "identifier note" }));
        const text = failure.error ?? "(no error text)";
        const error = el("pre", text, { class: "error-text", "data-field": "error" });
        if (text.length > LONG_ERROR || text.includes("\n")) {
          const details = el("details");
          details.append(el("summary", `${text.split("\n")[0].slice(0, LONG_ERROR)}…`), error);
          item.append(details);
        } else {
          item.append(error);
        }
        return item;
      }),
    );
  }

  function render(stats) {
    renderCounts(stats);
    renderQueue(stats);
    renderBacklog(stats);
    renderCycles(stats);
    renderFeishu(stats);
    renderFailures(stats);
    byId("figures").hidden = false;
  }

  // ---- refresh, staleness, sign-in --------------------------------------------------------------

  function banner(text) {
    const node = byId("banner");
    node.hidden = !text;
    node.textContent = text || "";
  }

  function showLogin(message) {
    signedOut = true;
    byId("figures").hidden = true;
    byId("sign-out").hidden = true;
    byId("login").hidden = false;
    byId("login-error").textContent = message || "";
    byId("updated").textContent = "signed out";
    byId("updated").dataset.state = "signed-out";
    banner(null);
    byId("api-key").focus();
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (!document.hidden && !signedOut) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    clearTimeout(timer);
    timer = null;
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    const asked = session;
    try {
      const stats = await api("GET", "/api/stats");
      if (asked !== session) return;
      signedOut = false;
      byId("login").hidden = true;
      byId("sign-out").hidden = !sessionStorage.getItem(KEY_STORAGE);
      render(stats);
      banner(null);
      lastUpdate = new Date();
      byId("updated").textContent = `updated at ${when(lastUpdate.toISOString())}`;
      byId("updated").dataset.state = "fresh";
    } catch (err) {
      if (asked !== session) return;
      if (err.status === 401) {
        const hadKey = sessionStorage.getItem(KEY_STORAGE) !== null;
        sessionStorage.removeItem(KEY_STORAGE);
        showLogin(hadKey ? err.message : "");
      } else {
        const since = lastUpdate ? `the figures shown are from ${when(lastUpdate.toISOString())}` : "no figures yet";
        banner(`Could not refresh (${err.message}); ${since}. Trying again shortly.`);
        byId("updated").dataset.state = "stale";
      }
    } finally {
      loading = false;
      if (again && !signedOut) {
        again = false;
        refresh();
      } else {
        schedule();
      }
    }
  }

  byId("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byId("api-key");
    sessionStorage.setItem(KEY_STORAGE, input.value);
    input.value = "";
    byId("login-error").textContent = "";
    signedOut = false;
    refresh();
  });

  byId("sign-out").addEventListener("click", () => {
    session += 1;
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin("");
  });

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) schedule();
    else if (!signedOut) refresh();
  });

  // ---- bulk actions: a dry run first, then Confirm ----------------------------------------------

  const actionButtons = [byId("retry-failed"), byId("cancel-pending")];

  function busy(on) {
    for (const button of [...actionButtons, byId("action-yes"), byId("action-no")]) button.disabled = on;
  }

  function actionResult(text, attrs) {
    const node = byId("action-result");
    node.textContent = text;
    delete node.dataset.changed;
    delete node.dataset.error;
    Object.assign(node.dataset, attrs || {});
  }

  async function runAction(action, dryRun) {
    return api("POST", `/api/tasks/bulk/${action}${dryRun ? "?dry_run=true" : ""}`);
  }

  function failed(err) {
    if (err.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      showLogin(err.message);
    }
    actionResult(`Failed: ${err.message}`, { error: String(err.status || "") });
  }

  for (const button of actionButtons) {
    button.addEventListener("click", async () => {
      const { action, status } = button.dataset;
      busy(true);
      actionResult("");
      byId("action-confirm").hidden = true;
      try {
        const answer = await runAction(action, true);
        const question = byId("action-question");
        if (answer.matched === 0) {
          actionResult(`No ${status} task to ${action}.`, { changed: "0" });
          return;
        }
        const more = answer.more ? " (more match: one run takes the first 10,000)" : "";
        const verb = action === "retry" ? "Retry" : "Cancel";
        question.textContent = `${verb} ${number(answer.matched)} ${status} tasks${more}?`;
        question.dataset.matched = String(answer.matched);
        question.dataset.action = action;
        pending = { action, status };
        byId("action-confirm").hidden = false;
      } catch (err) {
        failed(err);
      } finally {
        busy(false);
      }
    });
  }

  byId("action-no").addEventListener("click", () => {
    pending = null;
    byId("action-confirm").hidden = true;
    actionResult("Nothing changed.");
  });

  byId("action-yes").addEventListener("click", async () => {
    if (!pending) return;
    const { action, status } = pending;
    pending = null;
    busy(true);
    try {
      const answer = await runAction(action, false);
      byId("action-confirm").hidden = true;
      const done = action === "retry" ? "now PENDING" : "now CANCELLED";
      const more = answer.more ? "; more match: run it again for the rest" : "";
      actionResult(`${number(answer.changed)} of ${number(answer.matched)} ${status} tasks ${done}${more}.`, {
        changed: String(answer.changed),
      });
      await refresh();
    } catch (err) {
      failed(err);
    } finally {
      busy(false);
    }
  });

  refresh();
})();
