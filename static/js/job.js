// A job's live page: loss and learning-rate charts (uPlot), progress, and the event log, fed first by the
// stored metrics and then by the job's SSE stream. Points are keyed by step, so the replay after a reload or
// a reconnect (EventSource resends Last-Event-ID) can neither duplicate nor drop a point.
(function () {
  "use strict";

  const page = document.getElementById("job-page");
  if (!page) return;
  const jobId = page.dataset.jobId;
  const api = `/v1/fine_tuning/jobs/${jobId}`;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const HISTORY_POINTS = 2000;
  const points = new Map(); // step -> {step, loss, eval_loss, learning_rate, grad_norm, epoch, tokens_per_second}
  const seenEvents = new Set([...document.querySelectorAll("[data-event-id]")].map((li) => li.dataset.eventId));
  let lossPlot = null, lrPlot = null, rewardPlot = null, drawPending = false, source = null;
  let lastStatus = page.dataset.status, totalSteps = null;
  const rates = []; // recent [time, step] pairs for the ETA

  const byId = (id) => document.getElementById(id);

  function merge(point) {
    const old = points.get(point.step) || {};
    const merged = { ...old };
    for (const [key, value] of Object.entries(point)) if (value !== null && value !== undefined) merged[key] = value;
    points.set(point.step, merged);
  }

  function series() {
    const steps = [...points.keys()].sort((a, b) => a - b);
    const col = (key) => steps.map((s) => (points.get(s)[key] ?? null));
    return { steps, loss: col("loss"), evalLoss: col("eval_loss"), lr: col("learning_rate"), grad: col("grad_norm"),
      rewards: [col("rewards_chosen"), col("rewards_rejected"), col("reward_margin"), col("eval_reward_margin"),
        col("reward_accuracy"), col("eval_reward_accuracy")] };
  }

  // Learning rates live around 1e-4: uPlot's default labels would round every tick to "0".
  function tickLabels(_u, splits) {
    return splits.map((v) => (v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : String(+v.toPrecision(3))));
  }

  // Steps are whole numbers: ticks at 1, 2, 5, 10... steps, never 1.5.
  const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000];
  // A y axis as wide as its longest label (e.g. "2.0e-4"), so no label is clipped at the chart's edge.
  function axisSize(_u, values) {
    const longest = values ? Math.max(0, ...values.map((v) => String(v).length)) : 4;
    return Math.max(40, 8 * longest + 18);
  }

  // `onY2`: the series drawn against the right-hand axis (by index among `labels`).
  function makePlot(el, labels, colors, scales, onY2 = [1]) {
    const width = Math.max(300, el.clientWidth);
    return new uPlot({
      width, height: 240,
      // The legend names the series; a value beside each name appears only while the cursor is on the chart
      // (live legends read "--" until hovered).
      legend: { live: false },
      scales: { x: { time: false }, ...scales },
      axes: [{ label: "step", incrs: STEP_INCRS }, { scale: "y", values: tickLabels, size: axisSize },
        ...(scales.y2 ? [{ scale: "y2", side: 1, grid: { show: false }, values: tickLabels, size: axisSize }] : [])],
      series: [{ label: "step" }, ...labels.map((label, i) => ({
        label, stroke: colors[i], width: 2, scale: onY2.includes(i) && scales.y2 ? "y2" : "y", spanGaps: true,
        points: { show: label.startsWith("eval"), size: 6 },
      }))],
    }, [[]].concat(labels.map(() => [])), el);
  }

  function draw() {
    drawPending = false;
    if (typeof uPlot === "undefined") { scheduleDraw(); return; }
    const s = series();
    byId("chart-empty").hidden = s.steps.length > 0;
    // No blank axes before the first step: the charts appear (and are measured) with their first point.
    if (!s.steps.length && !lossPlot) return;
    byId("chart-pair").hidden = false;
    const phase = byId("job-phase");
    if (phase) phase.hidden = true;
    if (!lossPlot) {
      lossPlot = makePlot(byId("loss-chart"), ["train loss", "eval loss"], ["#3b5bdb", "#e8590c"], { y: {} });
      lrPlot = makePlot(byId("lr-chart"), ["learning rate", "grad norm"], ["#2b8a3e", "#ae3ec9"], { y: {}, y2: {} });
      // A DPO run's own curves: rewards and margin on the left, accuracy (0 to 1) on the right.
      if (byId("reward-chart")) {
        rewardPlot = makePlot(byId("reward-chart"),
          ["rewards chosen", "rewards rejected", "reward margin", "eval reward margin", "accuracy", "eval accuracy"],
          ["#2b8a3e", "#c92a2a", "#3b5bdb", "#e8590c", "#868e96", "#f08c00"],
          { y: {}, y2: { range: [0, 1] } }, [4, 5]);
      }
    }
    if (rewardPlot) {
      rewardPlot.setData([s.steps, ...s.rewards]);
      byId("reward-chart").dataset.points = String(s.rewards[2].filter((v) => v !== null).length);
    }
    lossPlot.setData([s.steps, s.loss, s.evalLoss]);
    lrPlot.setData([s.steps, s.lr, s.grad]);
    const chart = byId("loss-chart");
    chart.dataset.points = String(s.steps.length);
    chart.dataset.lastStep = String(s.steps.length ? s.steps[s.steps.length - 1] : 0);
  }

  function scheduleDraw() {
    if (!drawPending) { drawPending = true; requestAnimationFrame(draw); }
  }

  function formatEta(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "—";
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = Math.round(seconds % 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  }

  function showProgress(point) {
    const step = point.step;
    if (totalSteps) {
      byId("progress-fill").style.width = `${Math.min(100, (100 * step) / totalSteps).toFixed(1)}%`;
      byId("progress-step").textContent = `${step} / ${totalSteps}`;
    } else {
      byId("progress-step").textContent = `${step} / ?`;
    }
    if (point.epoch !== undefined && point.epoch !== null) byId("progress-epoch").textContent = point.epoch.toFixed(2);
    if (point.tokens_per_second) byId("progress-tps").textContent = Math.round(point.tokens_per_second).toLocaleString("en-US");
    if (point.loss !== undefined && point.loss !== null) byId("progress-loss").textContent = point.loss.toFixed(4);
    rates.push([performance.now() / 1000, step]);
    while (rates.length > 20) rates.shift();
    if (totalSteps && rates.length > 1) {
      const [t0, s0] = rates[0], [t1, s1] = rates[rates.length - 1];
      const perStep = (t1 - t0) / Math.max(1, s1 - s0);
      byId("progress-eta").textContent = s1 > s0 ? formatEta(perStep * (totalSteps - step)) : "—";
    }
  }

  function addEvent(event) {
    if (seenEvents.has(event.id)) return;
    seenEvents.add(event.id);
    const li = document.createElement("li");
    li.className = `event ${event.level}`;
    li.dataset.eventId = event.id;
    const time = document.createElement("time");
    time.textContent = new Date(event.created_at * 1000).toLocaleTimeString("en-GB");
    li.append(time, ` ${event.message}`);
    byId("event-log").append(li);
  }

  async function refreshSummary() {
    const response = await fetch(`/jobs/${jobId}`, { headers: { "HX-Request": "true" } });
    if (response.ok) byId("job-summary").innerHTML = await response.text();
  }

  function onStatus(data) {
    if (data.total_steps) totalSteps = data.total_steps;
    if (data.status !== lastStatus || TERMINAL.has(data.status)) {
      lastStatus = data.status;
      page.dataset.status = data.status;
      refreshSummary();
    }
  }

  // The highest step on the chart: what the page holds, so a reopened stream sends only what is newer (and, from
  // the server's database, any step its Redis stream lost meanwhile).
  function heldStep(fallback) {
    return points.size ? Math.max(...points.keys()) : fallback;
  }

  // Steps up to `afterStep` came from the stored metrics, so the stream leaves them out; `afterId` resumes
  // after a stream entry. EventSource would reconnect with the same URL, so the page reopens the stream itself
  // with the steps it holds now: after a drop, and after a rewind below afterStep (with the lower bar).
  function connect(afterStep, afterId) {
    const query = new URLSearchParams();
    if (afterStep !== null) query.set("after_step", afterStep);
    if (afterId) query.set("after", afterId);
    source = new EventSource(`${api}/stream?${query}`);
    let lastId = afterId;
    const seen = (e) => { if (e.lastEventId) lastId = e.lastEventId; };
    ["metric", "rewind", "event", "status"].forEach((type) => source.addEventListener(type, seen));
    source.addEventListener("metric", (e) => {
      const point = JSON.parse(e.data);
      merge(point);
      showProgress(point);
      scheduleDraw();
    });
    source.addEventListener("rewind", (e) => {
      // A resumed run logs the steps after its checkpoint again: drop the old ones.
      const { step } = JSON.parse(e.data);
      for (const s of [...points.keys()]) if (s > step) points.delete(s);
      scheduleDraw();
      if (afterStep !== null && step < afterStep) {
        source.close();
        connect(step, e.lastEventId);
      }
    });
    source.addEventListener("event", (e) => {
      addEvent(JSON.parse(e.data));
      // Before the first step each event may open a new phase (loading, tokenizing): show it at the top.
      if (!points.size) refreshSummary();
    });
    source.addEventListener("status", (e) => onStatus(JSON.parse(e.data)));
    source.addEventListener("end", () => { source.close(); page.dataset.streamEnded = "true"; });
    source.addEventListener("error", () => {
      if (page.dataset.streamEnded) return;
      // A refused stream is closed for good (e.g. 429: this user has too many live views open): say why instead
      // of freezing silently.
      if (source.readyState === EventSource.CLOSED) { explainRefusal(source.url); return; }
      // A dropped one: reopen it with the steps held now, rather than let EventSource resend the first URL's bar.
      const dropped = source;
      dropped.close();
      setTimeout(() => { if (source === dropped) connect(heldStep(afterStep), lastId); }, 1000);
    });
  }

  async function explainRefusal(url) {
    let message = "Live updates stopped; reload the page to resume them.";
    const controller = new AbortController();
    try {
      const response = await fetch(url, { signal: controller.signal, headers: { Accept: "text/event-stream" } });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        if (body.error && body.error.message) message = `Live updates are off: ${body.error.message}`;
      }
    } catch (_) {
      // Unreachable server: the general message stands.
    }
    controller.abort(); // a stream that opened this time is not wanted here: the page reconnects on reload
    let note = byId("stream-note");
    if (!note) {
      note = document.createElement("p");
      note.id = "stream-note";
      note.className = "stream-note";
      byId("job-summary").after(note);
    }
    note.textContent = message;
  }

  async function loadHistory() {
    // One request: every step of a run up to HISTORY_POINTS steps, and for a longer one the server's M4
    // selection (each bucket's first, last, lowest and highest point), which draws the same curve at chart
    // width for a fraction of the bytes (a 100,000-step run: 18 MB in 10 pages otherwise).
    const response = await fetch(`${api}/metrics?max_points=${HISTORY_POINTS}`);
    const data = response.ok ? (await response.json()).data : [];
    data.forEach(merge);
    const job = await (await fetch(api)).json();
    totalSteps = job.progress.total_steps;
    scheduleDraw();
    return data.length ? data[data.length - 1].step : null; // the stream need not resend what came from here
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("#cancel-job");
    if (!button) return;
    button.disabled = true;
    button.textContent = "Cancelling…";
    const csrf = document.querySelector("meta[name=csrf-token]");
    const response = await fetch(`${api}/cancel`, { method: "POST", headers: csrf ? { "X-CSRF-Token": csrf.content } : {} });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      button.textContent = (body.error && body.error.message) || "Cancel failed";
    }
  });

  window.addEventListener("resize", () => {
    [[lossPlot, "loss-chart"], [lrPlot, "lr-chart"], [rewardPlot, "reward-chart"]].forEach(([plot, id]) => {
      if (plot) plot.setSize({ width: Math.max(300, byId(id).clientWidth), height: 240 });
    });
  });

  // Exposed for the browser tests and for the curious: the steps currently on the chart.
  window.tuneboardJob = { steps: () => series().steps, points, plots: () => [lossPlot, lrPlot] };

  // A job that had ended when the page was rendered has every point in the database and every event on the
  // page: replaying its stream would only resend them (up to the stream's cap, 200,000 entries).
  loadHistory().then((lastStoredStep) => {
    if (TERMINAL.has(lastStatus)) page.dataset.streamEnded = "true";
    else connect(lastStoredStep, null);
  });
})();
