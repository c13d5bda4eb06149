// The Train page's run charts: loss per step and validation accuracy per epoch, drawn on two canvases, with
// a progress line while the run trains. Then, every POLL_MS, this fetches the run's live file (JSON lines
// the worker appends as it stores events) and redraws two lines and their axes. A script run per update,
// or a Plotly chart that lays out its whole figure again, costs the browser far more. On a 2-core machine
// the browser's work comes out of the training worker's time, so it must stay small. The data of each
// script run is the fallback: the charts draw whichever source has more points.

const POLL_MS = 200;

const MARGIN = { left: 56, right: 12, top: 8, bottom: 44 };
const GRID = "#e6e9ef";
const TEXT = "#808495";

// A step of 1, 2 or 5 times a power of ten that cuts `span` into about `count` parts.
function niceStep(span, count) {
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / magnitude;
  if (fraction < 1.5) return magnitude;
  if (fraction < 3) return 2 * magnitude;
  if (fraction < 7) return 5 * magnitude;
  return 10 * magnitude;
}

function ticks(lo, hi, count, whole) {
  let step = niceStep(hi - lo, count);
  if (whole) step = Math.max(1, Math.round(step));
  const values = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    values.push(Number(v.toFixed(10)));
  }
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return values.map((v) => ({ value: v, label: v.toFixed(decimals) }));
}

function label(value) {
  return Math.abs(value) >= 100 || Number.isInteger(value) ? String(value) : value.toFixed(3);
}

// Index of the point whose x is nearest to `x`; xs is sorted.
function nearest(xs, x) {
  let lo = 0;
  let hi = xs.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid;
    else hi = mid;
  }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

function draw(canvas, chart, hoverX, font) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const ratio = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);

  const xs = chart.x;
  const ys = chart.y;
  const [x0, x1] = chart.x_range;
  const [y0, y1] = chart.y_range;
  const left = MARGIN.left;
  const right = width - MARGIN.right;
  const top = MARGIN.top;
  const bottom = height - MARGIN.bottom;
  const px = (x) => left + ((x - x0) / (x1 - x0)) * (right - left);
  const py = (y) => bottom - ((y - y0) / (y1 - y0)) * (bottom - top);

  g.font = `12px ${font}`;
  g.fillStyle = TEXT;
  g.strokeStyle = GRID;
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const tick of ticks(y0, y1, 5, false)) {
    const y = Math.round(py(tick.value)) + 0.5;
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(right, y);
    g.stroke();
    g.fillText(tick.label, left - 8, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  for (const tick of ticks(x0, x1, Math.max(2, Math.min(6, Math.floor((right - left) / 80))), true)) {
    if (tick.value < x0 || tick.value > x1) continue;
    g.fillText(tick.label, px(tick.value), bottom + 8);
  }
  g.font = `14px ${font}`;
  g.fillText(chart.x_title, (left + right) / 2, bottom + 24);
  g.save();
  g.translate(14, (top + bottom) / 2);
  g.rotate(-Math.PI / 2);
  g.textBaseline = "middle";
  g.fillText(chart.y_title, 0, 0);
  g.restore();

  if (chart.hline) {
    const y = Math.round(py(chart.hline.y)) + 0.5;
    g.strokeStyle = "#999999";
    g.setLineDash([2, 3]);
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(right, y);
    g.stroke();
    g.setLineDash([]);
    g.font = `12px ${font}`;
    g.textAlign = "right";
    g.textBaseline = "top";
    g.fillText(chart.hline.label, right, y + 3);
  }

  g.save();
  g.beginPath();
  g.rect(left, top - 4, right - left, bottom - top + 8);
  g.clip();
  g.strokeStyle = chart.color;
  g.lineWidth = chart.markers ? 2 : 1.6;
  g.lineJoin = "round";
  g.beginPath();
  for (let i = 0; i < xs.length; i++) {
    if (i) g.lineTo(px(xs[i]), py(ys[i]));
    else g.moveTo(px(xs[i]), py(ys[i]));
  }
  g.stroke();
  g.fillStyle = chart.color;
  if (chart.markers) {
    for (let i = 0; i < xs.length; i++) {
      g.beginPath();
      g.arc(px(xs[i]), py(ys[i]), 3.5, 0, 2 * Math.PI);
      g.fill();
    }
  }
  g.restore();

  if (hoverX !== null && xs.length) {
    const i = nearest(xs, x0 + ((hoverX - left) / (right - left)) * (x1 - x0));
    const x = px(xs[i]);
    const y = py(ys[i]);
    g.strokeStyle = "#b0b4c0";
    g.beginPath();
    g.moveTo(Math.round(x) + 0.5, top);
    g.lineTo(Math.round(x) + 0.5, bottom);
    g.stroke();
    g.fillStyle = chart.color;
    g.beginPath();
    g.arc(x, y, 4, 0, 2 * Math.PI);
    g.fill();
    const text = `${chart.x_title} ${label(xs[i])}: ${chart.y_title} ${label(ys[i])}`;
    g.font = `13px ${font}`;
    const boxWidth = g.measureText(text).width + 12;
    const boxX = Math.min(Math.max(x + 8, left), right - boxWidth);
    // The box goes in the half of the plot away from the point, so it hides neither the point nor its
    // neighbours.
    const boxY = y < (top + bottom) / 2 ? bottom - 26 : top + 2;
    g.fillStyle = "rgba(255, 255, 255, 0.92)";
    g.strokeStyle = chart.color;
    g.fillRect(boxX, boxY, boxWidth, 22);
    g.strokeRect(boxX + 0.5, boxY + 0.5, boxWidth - 1, 21);
    g.fillStyle = "#31333f";
    g.textAlign = "left";
    g.textBaseline = "middle";
    g.fillText(text, boxX + 6, boxY + 11);
  }
}

// The series read so far from the live file; `parsed` is how many characters of it have been read.
function emptyLog() {
  return { parsed: 0, steps: [], losses: [], times: [], epochs: [], accs: [], stepsTotal: null, seconds: 0 };
}

function readLog(log, text) {
  if (text.length < log.parsed) Object.assign(log, emptyLog()); // a new file under the same name
  const end = text.lastIndexOf("\n") + 1; // the last line may still be half written
  if (end <= log.parsed) return false;
  for (const line of text.slice(log.parsed, end).split("\n")) {
    if (!line) continue;
    const event = JSON.parse(line);
    if (event.seconds !== undefined) log.seconds = Math.max(log.seconds, event.seconds);
    if (event.type === "start") log.stepsTotal = event.steps_total ?? log.stepsTotal;
    else if (event.type === "step") {
      log.steps.push(event.step);
      log.losses.push(event["train/loss"]);
      log.times.push(event.seconds);
    } else if (event.type === "eval" && event.epoch !== null && event.epoch !== undefined) {
      log.epochs.push(event.epoch);
      log.accs.push(event["val/acc"]);
    }
  }
  log.parsed = end;
  return true;
}

// The charts to draw: the script run's data, with the live file's series where it has more points.
function current(view) {
  const [loss, accuracy] = view.data.charts;
  const log = view.log;
  const charts = [{ ...loss }, { ...accuracy }];
  if (log.steps.length > loss.count) {
    Object.assign(charts[0], { x: log.steps, y: log.losses, count: log.steps.length });
    if (log.stepsTotal) charts[0].x_range = [0, log.stepsTotal];
  }
  if (log.accs.length > accuracy.count) {
    Object.assign(charts[1], { x: log.epochs, y: log.accs, count: log.accs.length });
  }
  if (!charts[0].y_range) {
    const top = charts[0].y.reduce((a, b) => Math.max(a, b), 0);
    charts[0].y_range = [0, top > 0 ? 1.05 * top : 1];
  }
  return charts;
}

// Change an element's text only when it differs: every change makes the browser lay the page out again.
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// Steps per second over the last RATE_STEPS steps, or null before there are that many. The first steps
// include the worker's start, so a rate over them overstates the time left several times over.
const RATE_STEPS = 20;

function recentRate(log) {
  const n = log.steps.length;
  if (n <= RATE_STEPS) return null;
  const seconds = log.times[n - 1] - log.times[n - 1 - RATE_STEPS];
  return seconds > 0 ? (log.steps[n - 1] - log.steps[n - 1 - RATE_STEPS]) / seconds : null;
}

function formatSeconds(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
}

// The progress line above the charts, from the source with more steps.
function drawProgress(view, charts) {
  const fromLog = view.log.steps.length > view.data.charts[0].count;
  const info = view.data.progress || (fromLog ? {} : null);
  const element = view.root.querySelector(".progress");
  element.hidden = !info;
  if (!info) return;
  const step = fromLog ? view.log.steps[view.log.steps.length - 1] : info.step;
  const total = (fromLog && view.log.stepsTotal) || info.steps_total;
  const seconds = fromLog ? view.log.seconds : info.seconds;
  let text = `Step ${step} of ${total || "…"} · ${formatSeconds(seconds)} elapsed`;
  let rate = null;
  if (fromLog) rate = recentRate(view.log);
  else if (step >= RATE_STEPS && seconds > 0) rate = step / seconds;
  if (rate) {
    if (total) text += ` · about ${formatSeconds((total - step) / rate)} left`;
    text += ` · ${rate.toFixed(1)} steps per second`;
  }
  const accuracy = charts[1].y;
  if (accuracy.length) text += ` · validation accuracy ${accuracy[accuracy.length - 1].toFixed(3)}`;
  if (info.stopping) text += " · stopping…";
  setText(element.querySelector(".progress-text"), text);
  const width = `${total ? Math.min(100, (100 * step) / total) : 0}%`;
  const bar = element.querySelector(".progress-bar");
  if (bar.style.width !== width) bar.style.width = width;
}

// Fetch the live file now and every POLL_MS. Its first events, when the page was drawn before the run's first
// step, and its removal at the run's end each request a script run, which redraws the page for the change.
function poll(view) {
  if (view.timer) return;
  const fetchLog = async () => {
    if (!view.root.isConnected || !view.data.live_url) {
      clearInterval(view.timer);
      view.timer = null;
      return;
    }
    if (view.fetching || document.hidden) return; // a tab in the background draws nothing
    view.fetching = true;
    try {
      const response = await fetch(new URL(view.data.live_url, document.baseURI), { cache: "no-store" });
      if (response.ok) {
        if (readLog(view.log, await response.text())) view.redraw();
        if (view.log.parsed && !view.data.charts[0].count) trigger(view, "started");
      } else if (response.status === 404 && view.log.parsed) trigger(view, "ended");
    } catch (error) {
      // No server for a moment: the data of the last script run stays drawn.
    } finally {
      view.fetching = false;
    }
  };
  view.timer = setInterval(fetchLog, POLL_MS);
  fetchLog();
}

function trigger(view, status) {
  if (view.triggered[status]) return;
  view.triggered[status] = true;
  view.setTriggerValue("status", status);
}

// Record, for a screen reader or a test, a chart's number of points and its latest value.
function describe(canvas, chart) {
  const n = chart.count;
  const last = chart.y.length ? chart.y[chart.y.length - 1] : null;
  canvas.dataset.points = String(n);
  canvas.setAttribute(
    "aria-label",
    last === null
      ? `${chart.title}: no points yet`
      : `${chart.title}: ${n} points, latest ${chart.y_title} ${label(last)} at ${chart.x_title} ` +
          `${label(chart.x[chart.x.length - 1])}`,
  );
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector(".live");
  if (!root || !data) return;
  let view = root.__liveCharts;
  if (!view) {
    view = { root, hover: {}, data: null, log: emptyLog(), panels: [...root.querySelectorAll(".panel")] };
    view.font = getComputedStyle(root).fontFamily || "sans-serif";
    // Each poll brings new loss points, but the accuracy chart changes once an epoch: a chart is drawn
    // again only when a script run sent new data, or its points, axes, size or the pointer over it changed.
    view.drawn = [];
    view.generation = 0;
    view.redraw = () => {
      const charts = current(view);
      drawProgress(view, charts);
      view.panels.forEach((panel, i) => {
        const chart = charts[i];
        const canvas = panel.querySelector("canvas");
        const hover = view.hover[i] ?? null;
        const drawn = JSON.stringify([view.generation, chart.count, chart.x_range, chart.y_range, hover,
          canvas.clientWidth]);
        if (view.drawn[i] === drawn) return;
        view.drawn[i] = drawn;
        setText(panel.querySelector(".title"), chart.title);
        describe(canvas, chart);
        draw(canvas, chart, hover, view.font);
      });
    };
    view.panels.forEach((panel, i) => {
      const canvas = panel.querySelector("canvas");
      canvas.addEventListener("mousemove", (event) => {
        view.hover[i] = event.offsetX;
        view.redraw();
      });
      canvas.addEventListener("mouseleave", () => {
        view.hover[i] = null;
        view.redraw();
      });
    });
    new ResizeObserver(() => view.data && view.redraw()).observe(root);
    root.__liveCharts = view;
  }
  if (!view.data || view.data.live_url !== data.live_url) {
    view.log = emptyLog();
    view.triggered = {};
  }
  view.data = data;
  view.generation += 1; // possibly another run's data with the same number of points
  view.setTriggerValue = setTriggerValue;
  view.redraw();
  if (data.live_url) poll(view);
}
