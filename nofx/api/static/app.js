// The oversight dashboard: a client of the HTTP API like any other, with the caller's token.
// No framework and nothing from elsewhere: DOM built with textContent (never innerHTML), so
// no text from the platform is ever read as markup.

const TOKEN_KEY = "nofx-token";
const main = document.getElementById("main");
const banner = document.getElementById("banner");
let me = null;
let refreshTimer = null;

// ---- DOM and formatting --------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const num = (v, digits = 2) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);
const secs = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(1)} s`);
const risk = (level) => h("span", { class: `pill risk-${level || "none"}` }, level || "—");

function table(columns, rows, { rowClass, empty = "nothing yet" } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          { class: rowClass ? rowClass(row) : "" },
          columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.value(row))),
        ),
      ),
    ),
  );
}

function say(message, isError = false) {
  banner.hidden = false;
  banner.className = isError ? "error" : "";
  banner.setAttribute("role", isError ? "alert" : "status");
  banner.textContent = message;
}

// ---- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail;
    const text = Array.isArray(detail)
      ? detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`).join("; ")
      : detail || `HTTP ${status}`;
    super(text);
    this.status = status;
    this.rule = body && body.rule;
  }
}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const parsed = await response.json().catch(() => null);
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("Your token was refused: " + ((parsed && parsed.detail) || "sign in again"));
    throw new ApiError(401, parsed);
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

// ---- live updates: /api/events as server-sent events, read with fetch (it carries the token) --

async function follow() {
  const light = document.getElementById("live");
  let last = null;
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return;
    try {
      const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
      if (last !== null) headers["Last-Event-ID"] = String(last);
      const response = await fetch("/api/events", { headers });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      light.className = "live on";
      light.textContent = "live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const fields = {};
          for (const line of message.split("\n")) {
            const colon = line.indexOf(":");
            if (colon <= 0) continue;
            fields[line.slice(0, colon)] = line.slice(colon + 1).trimStart();
          }
          if (fields.id) last = Number(fields.id);
          if (fields.event === "audit") refreshSoon();
        }
      }
    } catch (err) {
      // fall through to reconnect
    }
    light.className = "live off";
    light.textContent = "reconnecting";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => route(true), 300);
}

// ---- views -----------------------------------------------------------------------------------

function answerPanel(decision) {
  const reason = h("input", { name: "reason", placeholder: "why (kept and learnt from)", size: 32 });
  const alternatives = (decision.alternatives || [])
    .map((a) => a.candidate.name)
    .filter((name) => name !== decision.chosen);
  const instead = h("select", { name: "action" }, alternatives.map((n) => h("option", { value: n }, n)));
  const outcome = h("p", { class: "outcome", role: "status" });
  const ref = decision.decision_id;
  async function send(kind) {
    outcome.className = "outcome";
    outcome.textContent = "sending…";
    try {
      let ack;
      if (kind === "override") {
        ack = await api("POST", "/api/autonomous/override", { decision: ref, action: instead.value, reason: reason.value });
      } else {
        ack = await api("POST", `/api/approvals/${encodeURIComponent(ref)}/${kind}`, { reason: reason.value });
      }
      outcome.textContent = `${kind} accepted: ${ack.outcome}, decision now ${ack.status}`;
      say(`Decision ${ref}: ${outcome.textContent}`);
      await route();
    } catch (err) {
      outcome.className = "outcome error";
      outcome.textContent = `${kind} refused (${err.status}): ${err.message}`;
      say(`Decision ${ref}: ${outcome.textContent}`, true);
    }
  }
  return h(
    "div",
    { class: "actions", "data-decision": ref },
    h("label", {}, "Reason", reason),
    h("button", { class: "primary", onclick: () => send("approve") }, "Approve"),
    h("button", { class: "danger", onclick: () => send("reject") }, "Reject"),
    alternatives.length ? h("label", {}, "Run instead", instead) : null,
    alternatives.length ? h("button", { onclick: () => send("override") }, "Override") : null,
    outcome,
  );
}

function criteriaTable(decision) {
  const rows = (decision.explanation && decision.explanation.criteria) || [];
  return table(
    [
      { label: "#", value: (r) => r.rank, num: true },
      { label: "candidate", value: (r) => r.candidate },
      { label: "success", value: (r) => num(r.success_probability), num: true },
      { label: "recovery s", value: (r) => num(r.expected_recovery_seconds, 0), num: true },
      { label: "risk", value: (r) => (r.risk_level ? risk(r.risk_level) : r.pruned_by || "—") },
      { label: "risk score", value: (r) => num(r.risk_score), num: true },
      { label: "cost", value: (r) => num(r.cost), num: true },
      { label: "total", value: (r) => num(r.total, 3), num: true },
      { label: "source", value: (r) => r.success_source || "—" },
    ],
    rows,
    { rowClass: (r) => (r.candidate === decision.chosen ? "chosen" : ""), empty: "no candidates" },
  );
}

function decisionCard(d, { full = false } = {}) {
  const waiting = d.running && d.status === "awaiting_approval";
  return h(
    "section",
    { class: "card decision", "data-decision": d.decision_id },
    h("h3", {}, h("a", { href: `#/decisions/${d.decision_id}` }, `${d.problem} on ${d.subject}`), " ",
      risk(d.risk && d.risk.level), " ", h("span", { class: "pill" }, d.status)),
    h("p", { class: "muted" },
      `mode ${d.mode} · chosen ${d.chosen || "—"} · confidence ${num(d.confidence)} · decision ${d.decision_id}` +
      (d.incident_id ? ` · incident ${d.incident_id}` : "")),
    h("pre", { class: "explanation" }, d.explanation ? d.explanation.text : ""),
    d.approval && d.approval.why.length ? h("p", {}, h("b", {}, "Why a person: "), d.approval.why.join("; ")) : null,
    d.approval && d.approval.required_permissions.length
      ? h("p", {}, h("b", {}, "Needs: "), d.approval.required_permissions.join(", "),
        ` · ${d.approval.approvers_needed} approver(s)`)
      : null,
    h("h3", {}, "Rollback plan"),
    (d.rollback_plan || []).length
      ? h("ol", {}, d.rollback_plan.map((step) => h("li", {}, step)))
      : h("p", { class: "muted" }, "nothing to undo"),
    full || waiting ? h("h3", {}, "Criteria") : null,
    full || waiting ? criteriaTable(d) : null,
    (d.approval && d.approval.verdicts.length)
      ? h("p", {}, h("b", {}, "Answers: "),
        d.approval.verdicts.map((v) => `${v.kind} by ${v.approver}${v.reason ? ` (${v.reason})` : ""}`).join("; "))
      : null,
    waiting ? answerPanel(d) : null,
  );
}

async function viewWaiting() {
  const pending = await api("GET", "/api/approvals");
  return [
    h("h2", {}, `Waiting for a person (${pending.length})`),
    pending.length ? pending.map((d) => decisionCard(d)) : h("p", { class: "muted", id: "nothing-waiting" }, "Nothing waits for a person."),
  ];
}

function timeline(events) {
  if (!events.length) return h("p", { class: "muted" }, "no events recorded");
  return h("ol", { class: "timeline" },
    events.map((e) => h("li", {}, h("b", {}, e.action), ` ${when(e.at)} by ${e.actor}`, e.reason ? h("div", { class: "muted" }, e.reason) : null)));
}

async function viewIncidents() {
  const rows = await api("GET", "/api/incidents?limit=100");
  return [
    h("h2", {}, "Incidents"),
    table(
      [
        { label: "started", value: (r) => when(r.started_at) },
        { label: "service", value: (r) => r.service || "—" },
        { label: "pattern", value: (r) => h("a", { href: `#/incidents/${r.id}` }, r.incident_type) },
        { label: "status", value: (r) => h("span", { class: "pill" }, r.status) },
        { label: "playbook", value: (r) => r.healing_strategy || "—" },
        { label: "resolved in", value: (r) => (r.resolution_time_ms ? secs(r.resolution_time_ms / 1000) : "—"), num: true },
      ],
      rows,
      { empty: "No incidents." },
    ),
  ];
}

async function viewIncident(id) {
  const inc = await api("GET", `/api/incidents/${encodeURIComponent(id)}`);
  return [
    h("h2", {}, `${inc.incident_type} on ${inc.service}`),
    h("p", {}, h("span", { class: "pill" }, inc.status), ` started ${when(inc.started_at)}`,
      inc.resolved_at ? ` · resolved ${when(inc.resolved_at)}` : "", ` · detected by ${inc.detection_method || "—"}`,
      inc.workflow_id ? ` · workflow ${inc.workflow_id}` : ""),
    inc.decision_id ? h("p", {}, "Decision: ", h("a", { href: `#/decisions/${inc.decision_id}` }, inc.decision_id),
      inc.awaiting_decision ? h("b", { class: "error" }, " — waits for a person") : "") : null,
    h("h3", {}, "Timeline"),
    timeline(inc.timeline),
    h("h3", {}, "Actions"),
    table(
      [
        { label: "action", value: (a) => a.action },
        { label: "service", value: (a) => a.service },
        { label: "performed", value: (a) => (a.performed ? "yes" : "no") },
        { label: "finished", value: (a) => when(a.finished_at) },
      ],
      inc.actions || [],
      { empty: "no action taken" },
    ),
    inc.running ? h("h3", {}, "Rollback plan") : null,
    inc.running ? ((inc.rollback_plan || []).length ? h("ol", {}, inc.rollback_plan.map((s) => h("li", {}, s))) : h("p", { class: "muted" }, "nothing to undo")) : null,
  ];
}

async function viewDecisions() {
  const rows = await api("GET", "/api/decisions?limit=100");
  return [
    h("h2", {}, "Decisions"),
    table(
      [
        { label: "made", value: (r) => when(r.created_at) },
        { label: "service", value: (r) => r.subject || "—" },
        { label: "problem", value: (r) => h("a", { href: `#/decisions/${r.decision_id}` }, r.problem || r.decision_id) },
        { label: "mode", value: (r) => r.mode || "—" },
        { label: "risk", value: (r) => risk(r.risk) },
        { label: "chosen", value: (r) => r.chosen || "—" },
        { label: "confidence", value: (r) => num(r.confidence), num: true },
        { label: "status", value: (r) => h("span", { class: "pill" }, r.status || "—") },
        { label: "decided by", value: (r) => r.decided_by || "—" },
      ],
      rows,
      { empty: "No decisions." },
    ),
  ];
}

async function viewDecision(id) {
  const d = await api("GET", `/api/decisions/${encodeURIComponent(id)}`);
  const events = await api("GET", `/api/decisions/${encodeURIComponent(id)}/timeline`);
  return [h("h2", {}, "Decision"), decisionCard(d, { full: true }), h("h3", {}, "Timeline"), timeline(events)];
}

function chart(report) {
  const W = 900, H = 300, L = 60, R = 10, T = 10, B = 30;
  const history = report.history.slice(-Math.max(48, report.points.length * 2));
  const times = [...history.map((p) => Date.parse(p.ts)), ...report.points.map((p) => Date.parse(p.ts))];
  // The scale fits what was seen, the mean and the limit; a band wider than that is clipped
  // (and says so), so that a wide 95% band never flattens the rest into a line.
  const core = [...history.map((p) => p.value), ...report.points.map((p) => p.mean)];
  if (report.exhaustion) core.push(report.exhaustion.limit);
  const [t0, t1] = [Math.min(...times), Math.max(...times)];
  const [lo, hi] = [Math.min(...core), Math.max(...core)];
  const pad = 0.25 * (hi - lo || Math.abs(hi) || 1);
  const lows = Math.min(...report.points.map((p) => p.lo95));
  const highs = Math.max(...report.points.map((p) => p.hi95));
  const v0 = Math.min(lo, Math.max(lows, lo - pad));
  const v1 = Math.max(hi, Math.min(highs, hi + pad));
  const clipped = lows < v0 || highs > v1;
  const x = (t) => L + ((t - t0) / (t1 - t0 || 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - v0) / (v1 - v0)) * (H - T - B);
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const band = (lo, hi, cls) => {
    const upper = report.points.map((p) => `${x(Date.parse(p.ts))},${y(p[hi])}`);
    const lower = report.points.map((p) => `${x(Date.parse(p.ts))},${y(p[lo])}`).reverse();
    return s("polygon", { points: [...upper, ...lower].join(" "), class: cls });
  };
  const line = (points, key, cls) => s("polyline", { points: points.map((p) => `${x(Date.parse(p.ts))},${y(p[key])}`).join(" "), class: cls });
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `forecast of ${report.metric} on ${report.service}` });
  const clip = s("clipPath", { id: "plot-area" });
  clip.append(s("rect", { x: L, y: T, width: W - L - R, height: H - T - B }));
  const plot = s("g", { "clip-path": "url(#plot-area)" });
  plot.append(band("lo95", "hi95", "band95"), band("lo80", "hi80", "band80"), line(history, "value", "history"), line(report.points, "mean", "mean"));
  svg.append(s("defs", {}), plot);
  svg.firstChild.append(clip);
  if (clipped) svg.append(s("text", { x: W - R, y: T + 10, class: "axis", "text-anchor": "end" }, `95% band clipped: ${Number(lows.toPrecision(4))} – ${Number(highs.toPrecision(4))}`));
  if (report.exhaustion) {
    const ly = y(report.exhaustion.limit);
    svg.append(s("line", { x1: L, x2: W - R, y1: ly, y2: ly, class: "limit" }), s("text", { x: L + 4, y: ly - 4, class: "axis" }, `limit ${report.exhaustion.limit}`));
  }
  svg.append(
    s("text", { x: 2, y: T + 10, class: "axis" }, Number(v1.toPrecision(4)).toString()),
    s("text", { x: 2, y: H - B, class: "axis" }, Number(v0.toPrecision(4)).toString()),
    s("text", { x: L, y: H - 8, class: "axis" }, new Date(t0).toLocaleString()),
    s("text", { x: W - R, y: H - 8, class: "axis", "text-anchor": "end" }, new Date(t1).toLocaleString()),
  );
  return svg;
}

async function viewForecasts() {
  const predictions = await api("GET", "/api/predictive/maintenance");
  const holder = h("div", { id: "forecast" });
  const service = h("input", { name: "service", list: "services", required: true, value: predictions[0] ? predictions[0].service : "" });
  const metric = h("input", { name: "metric", list: "metrics", required: true, value: predictions[0] && predictions[0].metric ? predictions[0].metric : "" });
  const horizon = h("input", { name: "horizon", type: "number", min: 1, max: 4032, value: 48 });
  async function draw(event) {
    if (event) event.preventDefault();
    holder.replaceChildren(h("p", { class: "muted" }, "forecasting…"));
    try {
      const report = await api("POST", "/api/predictive/forecast", { service: service.value, metric: metric.value, horizon_steps: Number(horizon.value) });
      const ex = report.exhaustion;
      holder.replaceChildren(
        chart(report),
        h("p", { class: "muted" }, `model ${report.model} · 80% and 95% intervals · ${report.repairs}`),
        ex ? h("p", {}, `Reaches its limit ${ex.limit}: probability ${pct(ex.probability)}, around ${when(ex.eta)} (between ${when(ex.earliest)} and ${when(ex.latest)})`) : null,
      );
    } catch (err) {
      holder.replaceChildren(h("p", { class: "error", role: "alert" }, `forecast refused (${err.status}): ${err.message}`));
    }
  }
  const form = h("form", { class: "actions card", onsubmit: draw },
    h("label", {}, "Service", service), h("label", {}, "Metric", metric), h("label", {}, "Steps ahead", horizon),
    h("button", { class: "primary", type: "submit" }, "Forecast"),
    h("datalist", { id: "services" }, [...new Set(predictions.map((p) => p.service))].map((v) => h("option", { value: v }))),
    h("datalist", { id: "metrics" }, [...new Set(predictions.map((p) => p.metric).filter(Boolean))].map((v) => h("option", { value: v }))));
  if (service.value && metric.value) draw();
  return [
    h("h2", {}, "Failure predictions"),
    table(
      [
        { label: "service", value: (p) => p.service },
        { label: "issue", value: (p) => p.predicted_issue },
        { label: "metric", value: (p) => p.metric || "—" },
        { label: "probability", value: (p) => pct(p.probability), num: true },
        { label: "fails around", value: (p) => when(p.eta) },
        { label: "window", value: (p) => `${when(p.eta_earliest)} – ${when(p.eta_latest)}` },
        { label: "do first", value: (p) => (p.recommended_action && (p.recommended_action.action || p.recommended_action.playbook)) || "—" },
      ],
      predictions,
      { empty: "No failure predicted." },
    ),
    h("h2", {}, "Forecast"),
    form,
    holder,
  ];
}

async function viewMaintenance() {
  const [jobs, schedules] = await Promise.all([api("GET", "/api/predictive/schedule?limit=200"), api("GET", "/api/schedules")]);
  const days = new Map();
  for (const job of jobs) {
    const day = job.scheduled_at ? new Date(job.scheduled_at).toDateString() : "not scheduled";
    if (!days.has(day)) days.set(day, []);
    days.get(day).push(job);
  }
  return [
    h("h2", {}, "Maintenance calendar"),
    jobs.length
      ? [...days.entries()].map(([day, list]) => h("div", { class: "day card" }, h("h3", {}, day),
        table(
          [
            { label: "at", value: (j) => (j.scheduled_at ? new Date(j.scheduled_at).toLocaleTimeString() : "—") },
            { label: "service", value: (j) => j.service },
            { label: "before", value: (j) => j.predicted_issue || "—" },
            { label: "deadline", value: (j) => when(j.deadline) },
            { label: "status", value: (j) => h("span", { class: "pill" }, j.status) },
            { label: "why", value: (j) => j.detail || "—" },
          ],
          list,
        )))
      : h("p", { class: "muted" }, "No maintenance job."),
    h("h2", {}, "Standing jobs (Temporal Schedules)"),
    table(
      [
        { label: "schedule", value: (s) => s.schedule_id },
        { label: "workflow", value: (s) => s.workflow || "—" },
        { label: "every", value: (s) => (s.every_seconds ? `${s.every_seconds / 60} min` : "—") },
        { label: "next", value: (s) => when(s.next_runs[0]) },
        { label: "state", value: (s) => (s.paused ? `paused${s.note ? `: ${s.note}` : ""}` : "active") },
      ],
      schedules,
      { empty: "No Schedule: `nofx bootstrap` creates them." },
    ),
  ];
}

async function viewMetrics() {
  const m = await api("GET", "/api/metrics/autonomy?hours=24");
  const stat = (label, value) => h("div", { class: "stat" }, h("b", {}, value), label);
  const counts = (title, rows) => {
    const most = Math.max(1, ...rows.map((r) => r.count));
    return h("div", { class: "card" }, h("h3", {}, title),
      table([
        { label: title.split(" ").pop(), value: (r) => r.key },
        { label: "decisions", value: (r) => r.count, num: true },
        { label: "", value: (r) => h("div", { class: "bar", style: `width:${(100 * r.count) / most}%` }) },
      ], rows, { empty: "none" }));
  };
  return [
    h("h2", {}, `Autonomy, last ${m.since_hours} h`),
    h("div", { class: "grid" },
      stat("incidents", m.incidents),
      stat("auto-resolved", `${m.auto_resolved} (${pct(m.auto_resolution_rate)})`),
      stat("escalated", m.escalated),
      stat("MTTD p50 / p95", `${secs(m.mttd_p50_s)} / ${secs(m.mttd_p95_s)}`),
      stat("MTTR p50 / p95", `${secs(m.mttr_p50_s)} / ${secs(m.mttr_p95_s)}`),
      stat("decisions", m.decisions),
      stat("human intervention", pct(m.human_intervention_rate)),
      stat("waiting now", m.waiting)),
    counts("Decisions by mode", m.by_mode),
    counts("Decisions by risk", m.by_risk),
    counts("Decisions by status", m.by_status),
  ];
}

async function viewControls() {
  const c = await api("GET", "/api/controls");
  const outcome = h("p", { class: "outcome", role: "status" });
  async function change(method, path, body) {
    outcome.className = "outcome";
    outcome.textContent = "sending…";
    try {
      await api(method, path, body);
      outcome.textContent = "done";
      say(`${path}: done`);
      await route();
    } catch (err) {
      outcome.className = "outcome error";
      outcome.textContent = `refused (${err.status}): ${err.message}`;
      say(`${path}: ${outcome.textContent}`, true);
    }
  }
  const reason = h("input", { name: "reason", placeholder: "why", size: 30 });
  const freezeReason = h("input", { name: "freeze-reason", placeholder: "why", size: 24 });
  const freezeScope = h("input", { name: "scope", value: "*", size: 10 });
  const freezeHours = h("input", { name: "hours", type: "number", value: 1, min: 0.1, step: 0.1 });
  const mode = h("select", { name: "mode" }, ["observe", "assist", "autonomous"].map((m) => h("option", { value: m, selected: m === c.mode }, m)));
  const admin = me && me.admin;
  return [
    h("h2", {}, "Kill switch"),
    h("div", { class: "card" },
      h("p", {}, "Automation is ", h("b", { id: "automation-state" }, c.paused ? "PAUSED" : "active"),
        c.changed_by ? ` (last change by ${c.changed_by}: ${c.reason || ""})` : ""),
      admin ? null : h("p", { class: "muted" }, "Changing controls needs platform:admin."),
      h("div", { class: "actions" }, h("label", {}, "Reason", reason),
        c.paused
          ? h("button", { class: "primary", onclick: () => change("POST", "/api/controls/kill-switch", { paused: false, reason: reason.value }) }, "Resume automation")
          : h("button", { class: "danger", onclick: () => change("POST", "/api/controls/kill-switch", { paused: true, reason: reason.value }) }, "Pause all automation")),
      outcome),
    h("h2", {}, "Decision mode"),
    h("div", { class: "card actions" }, h("label", {}, "Global mode", mode),
      h("button", { onclick: () => change("PUT", "/api/controls/mode", { mode: mode.value }) }, "Set"),
      Object.keys(c.service_modes).length ? h("span", { class: "muted" }, Object.entries(c.service_modes).map(([s, m]) => `${s}: ${m}`).join(", ")) : null),
    h("h2", {}, "Change freezes"),
    table(
      [
        { label: "scope", value: (f) => f.scope },
        { label: "from", value: (f) => when(f.starts_at) },
        { label: "until", value: (f) => when(f.ends_at) },
        { label: "why", value: (f) => f.reason || "—" },
        { label: "by", value: (f) => f.created_by || "—" },
      ],
      c.freezes,
      { empty: "No freeze in force or planned." },
    ),
    h("div", { class: "card actions" }, h("label", {}, "Scope", freezeScope), h("label", {}, "Hours", freezeHours), h("label", {}, "Reason", freezeReason),
      h("button", { onclick: () => change("POST", "/api/controls/freezes", { scope: freezeScope.value, hours: Number(freezeHours.value), reason: freezeReason.value }) }, "Freeze")),
    h("h2", {}, "Guardrail limits"),
    table([{ label: "limit", value: (r) => r[0] }, { label: "value", value: (r) => String(r[1]), num: true }], Object.entries(c.policy)),
    h("h2", {}, "Held or refused in the last hour"),
    table(
      [
        { label: "at", value: (v) => when(v.decided_at) },
        { label: "service", value: (v) => v.service },
        { label: "action", value: (v) => v.action },
        { label: "verdict", value: (v) => v.verdict },
        { label: "guardrail", value: (v) => v.guardrail || "—" },
        { label: "why", value: (v) => v.reason || "—" },
      ],
      c.refusals,
      { empty: "Nothing held." },
    ),
  ];
}

const VIEWS = {
  waiting: viewWaiting,
  incidents: viewIncidents,
  decisions: viewDecisions,
  forecasts: viewForecasts,
  maintenance: viewMaintenance,
  metrics: viewMetrics,
  controls: viewControls,
};
const DETAIL = { incidents: viewIncident, decisions: viewDecision };

// A person typing a reason or picking an option must not lose it to a live refresh: such a
// refresh waits until they have sent it (their own actions refresh at once).
function editing() {
  const focused = document.activeElement;
  if (main.contains(focused) && focused.matches("input, select")) return true;
  return [...main.querySelectorAll("input, select")].some((el) => el.dataset.edited === "1");
}
main.addEventListener("input", (event) => { event.target.dataset.edited = "1"; });

let routing = 0; // each render's number: a slower, older one never replaces a newer one

async function route(quiet = false) {
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  const mine = ++routing;
  const [, name = "waiting", id] = (location.hash || "#/waiting").split("/");
  const view = id && DETAIL[name] ? () => DETAIL[name](decodeURIComponent(id)) : VIEWS[name] || viewWaiting;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === name);
  try {
    const content = await view();
    const pending = await api("GET", "/api/approvals");
    if (mine !== routing) return;
    document.getElementById("waiting-count").textContent = pending.length ? String(pending.length) : "";
    if (quiet && main.dataset.view === name && editing()) {
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => route(true), 2000);
      return;
    }
    main.replaceChildren(...[content].flat(2).filter(Boolean));
    main.dataset.view = name;
    main.dataset.loaded = String(Date.now());
  } catch (err) {
    if (err.status !== 401 && mine === routing) say(`${name}: ${err.message}`, true);
  }
}

function showLogin(message = "") {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").textContent = "";
  const form = document.getElementById("login-template").content.cloneNode(true);
  main.replaceChildren(form);
  main.dataset.view = "login";
  const error = document.getElementById("login-error");
  error.textContent = message;
  document.getElementById("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    await start();
  });
}

async function start() {
  try {
    me = await api("GET", "/api/whoami");
  } catch (err) {
    if (err.status !== 401) showLogin(err.message);
    return;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = `${me.name}${me.admin ? " (admin)" : ""}`;
  banner.hidden = true;
  await route();
  follow();
}

window.addEventListener("hashchange", () => route());
if (sessionStorage.getItem(TOKEN_KEY)) start();
else showLogin();
