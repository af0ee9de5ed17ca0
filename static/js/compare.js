// The compare page's charts: every run's train loss as a line and its eval loss as dots, one colour per run, on one
// uPlot chart over the union of their steps; with DPO runs among them, their reward margin the same way on a second
// chart. Metrics come from each job's metrics endpoint, page by page, once for both charts.
(function () {
  "use strict";

  const chart = document.getElementById("compare-chart");
  if (!chart) return;
  const jobs = JSON.parse(chart.dataset.jobs);
  // Each chart: its element, the message shown until it is drawn, and the train and eval keys it plots.
  const charts = [{ element: chart, empty: "compare-chart-empty", train: "loss", evaluation: "eval_loss", axis: "loss" },
    { element: document.getElementById("margin-chart"), empty: "margin-chart-empty", train: "reward_margin",
      evaluation: "eval_reward_margin", axis: "reward margin" }].filter((c) => c.element);
  const drawn = new Map();

  async function metrics(jobId) {
    const points = [];
    let after = -1;
    for (;;) {
      const response = await fetch(`/v1/fine_tuning/jobs/${jobId}/metrics?after_step=${after}`);
      if (!response.ok) break;
      const body = await response.json();
      points.push(...body.data);
      if (!body.has_more || !body.data.length) break;
      after = body.data[body.data.length - 1].step;
    }
    return points;
  }

  // uPlot wants one x array shared by every series: the union of the runs' steps, nulls where a run has none.
  function align(runs, spec) {
    const has = (p) => [spec.train, spec.evaluation].some((key) => p[key] !== null && p[key] !== undefined);
    const steps = [...new Set(runs.flatMap((run) => run.points.filter(has).map((p) => p.step)))]
      .sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const series = [];
    runs.forEach((run) => {
      const train = new Array(steps.length).fill(null), evals = new Array(steps.length).fill(null);
      run.points.forEach((p) => {
        if (p[spec.train] !== null && p[spec.train] !== undefined) train[index.get(p.step)] = p[spec.train];
        if (p[spec.evaluation] !== null && p[spec.evaluation] !== undefined) {
          evals[index.get(p.step)] = p[spec.evaluation];
        }
      });
      if (!train.some((v) => v !== null) && !evals.some((v) => v !== null)) return;  // e.g. a supervised run's margin
      series.push({ job: run.job, kind: "train", values: train });
      if (evals.some((v) => v !== null)) series.push({ job: run.job, kind: "eval", values: evals });
    });
    return { steps, series };
  }

  function options(series, width, axis) {
    return {
      width, height: 340,
      // Whole steps only (no 1.5 ticks); the legend names the runs without "--" values until hovered.
      legend: { live: false },
      scales: { x: { time: false } },
      axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000,
        50000, 100000, 200000] }, { label: axis }],
      series: [{ label: "step" }, ...series.map((s) => s.kind === "train"
        ? { label: `${s.job.name} · train`, stroke: s.job.colour, width: 2, spanGaps: true, points: { show: false } }
        : { label: `${s.job.name} · eval`, stroke: s.job.colour, fill: s.job.colour, width: 0, paths: () => null,
            points: { show: true, size: 7, stroke: s.job.colour, fill: s.job.colour } })],
    };
  }

  function render(spec, runs) {
    const { steps, series } = align(runs, spec);
    const empty = document.getElementById(spec.empty);
    if (!steps.length) { empty.textContent = "None of these runs has logged a step yet."; return; }
    empty.hidden = true;
    const width = Math.max(320, spec.element.clientWidth);
    const plot = new uPlot(options(series, width, spec.axis), [steps, ...series.map((s) => s.values)], spec.element);
    drawn.set(spec.train, { plot, series });
    spec.element.dataset.series = String(series.filter((s) => s.kind === "train").length);
  }

  async function draw() {
    const runs = await Promise.all(jobs.map(async (job) => ({ job, points: await metrics(job.id) })));
    charts.forEach((spec) => render(spec, runs));
  }

  window.addEventListener("resize", () => {
    charts.forEach((spec) => {
      const chartDrawn = drawn.get(spec.train);
      if (chartDrawn) chartDrawn.plot.setSize({ width: Math.max(320, spec.element.clientWidth), height: 340 });
    });
  });

  // For the browser tests and the curious: each drawn series of a chart ("loss" or "reward_margin") and its points.
  window.tuneboardCompare = {
    series: (metric = "loss") => (drawn.get(metric) ? drawn.get(metric).series : []).map((s) => ({
      job: s.job.id, name: s.job.name, kind: s.kind, colour: s.job.colour,
      points: s.values.filter((v) => v !== null).length })),
  };

  const start = () => (typeof uPlot === "undefined" ? setTimeout(start, 20) : draw());
  start();
})();
