// The compare page's chart: every run's train loss as a line and its eval loss as dots, one colour per run,
// on one uPlot chart over the union of their steps. Metrics come from each job's metrics endpoint, page by page.
(function () {
  "use strict";

  const chart = document.getElementById("compare-chart");
  if (!chart) return;
  const jobs = JSON.parse(chart.dataset.jobs);
  let plot = null, drawn = [];

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
  function align(runs) {
    const steps = [...new Set(runs.flatMap((run) => run.points.map((p) => p.step)))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const series = [];
    runs.forEach((run) => {
      const train = new Array(steps.length).fill(null), evals = new Array(steps.length).fill(null);
      run.points.forEach((p) => {
        if (p.loss !== null && p.loss !== undefined) train[index.get(p.step)] = p.loss;
        if (p.eval_loss !== null && p.eval_loss !== undefined) evals[index.get(p.step)] = p.eval_loss;
      });
      series.push({ job: run.job, kind: "train", values: train });
      if (evals.some((v) => v !== null)) series.push({ job: run.job, kind: "eval", values: evals });
    });
    return { steps, series };
  }

  function options(series, width) {
    return {
      width, height: 340,
      // Whole steps only (no 1.5 ticks); the legend names the runs without "--" values until hovered.
      legend: { live: false },
      scales: { x: { time: false } },
      axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000,
        50000, 100000, 200000] }, { label: "loss" }],
      series: [{ label: "step" }, ...series.map((s) => s.kind === "train"
        ? { label: `${s.job.name} · train`, stroke: s.job.colour, width: 2, spanGaps: true, points: { show: false } }
        : { label: `${s.job.name} · eval`, stroke: s.job.colour, fill: s.job.colour, width: 0, paths: () => null,
            points: { show: true, size: 7, stroke: s.job.colour, fill: s.job.colour } })],
    };
  }

  async function draw() {
    const runs = await Promise.all(jobs.map(async (job) => ({ job, points: await metrics(job.id) })));
    const { steps, series } = align(runs);
    drawn = series;
    const empty = document.getElementById("compare-chart-empty");
    if (!steps.length) { empty.textContent = "None of these runs has logged a step yet."; return; }
    empty.hidden = true;
    plot = new uPlot(options(series, Math.max(320, chart.clientWidth)), [steps, ...series.map((s) => s.values)], chart);
    chart.dataset.series = String(series.filter((s) => s.kind === "train").length);
  }

  window.addEventListener("resize", () => {
    if (plot) plot.setSize({ width: Math.max(320, chart.clientWidth), height: 340 });
  });

  // For the browser tests and the curious: each drawn series and how many points it has.
  window.tuneboardCompare = {
    series: () => drawn.map((s) => ({ job: s.job.id, name: s.job.name, kind: s.kind, colour: s.job.colour,
                                     points: s.values.filter((v) => v !== null).length })),
  };

  const start = () => (typeof uPlot === "undefined" ? setTimeout(start, 20) : draw());
  start();
})();
