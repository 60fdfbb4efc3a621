// Loss-by-step chart: inline SVG drawn from the page's JSON feed (data-feed on <figure id="chart">).
// Every text goes in through textContent or an attribute, never through HTML, so what a job named
// itself stays text. Checkpoints are markers on the train curve, told apart by shape, not only colour.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies.
  const JOB_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];
  const SHAPES = {
    best: "M0,-8 L2.3,-2.9 L8,-2.5 L3.7,1.4 L4.9,7.1 L0,4.1 L-4.9,7.1 L-3.7,1.4 L-8,-2.5 L-2.3,-2.9 Z",
    ready: "M-5,0 A5,5 0 1,0 5,0 A5,5 0 1,0 -5,0 Z",
    "not-ready": "M0,-6.5 L6,4.5 L-6,4.5 Z",
    deleted: "M-5,-5 L5,5 M-5,5 L5,-5",
  };
  const STATE_WORDS = { best: "best", ready: "ready", "not-ready": "not ready", deleted: "deleted" };
  const MARGIN = { top: 14, right: 24, bottom: 42, left: 60 };

  function el(name, attributes, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function html(name, className, text, parent) {
    const node = document.createElement(name);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toFixed(10));
    return ticks;
  }

  function format(value) {
    if (value === null || value === undefined) return "-";
    return Math.abs(value) >= 1000 ? value.toLocaleString("en") : (+value.toPrecision(4)).toString();
  }

  // The train loss at a step: the last logged one at or before it.
  function valueAt(points, step) {
    let found = null;
    for (const [x, y] of points) {
      if (x > step) break;
      found = y;
    }
    return found;
  }

  function seriesOf(feed) {
    if (feed.jobs) {
      return feed.jobs.flatMap((job, i) => {
        const colour = JOB_COLOURS[i % JOB_COLOURS.length];
        return [
          { label: `${job.name}: train loss`, kind: "train", colour, points: job.curves.train },
          { label: `${job.name}: eval loss`, kind: "eval", colour, points: job.curves.eval },
        ];
      });
    }
    const evaluated = (feed.evaluations || []).map((e, i) => ({
      label: e.label, kind: "evaluation", colour: JOB_COLOURS[(i + 1) % JOB_COLOURS.length], points: e.points,
    }));
    return [
      { label: "train loss", kind: "train", points: feed.curves.train },
      { label: "eval loss", kind: "eval", points: feed.curves.eval },
      ...evaluated,
    ];
  }

  function markersOf(feed) {
    if (!feed.markers) return [];
    const train = feed.curves.train;
    return feed.markers.map((c) => {
      let y = valueAt(train, c.step);
      if (y === null) y = c.train_loss !== null ? c.train_loss : c.eval_loss;
      return { ...c, y };
    }).filter((m) => m.y !== null);
  }

  function legend(figure, series, withMarkers) {
    const list = html("ul", "legend", undefined, figure);
    list.setAttribute("aria-label", "Legend");
    for (const s of series) {
      const item = html("li", "", undefined, list);
      const icon = el("svg", { width: 28, height: 14, "aria-hidden": "true" }, item);
      const line = el("line", { x1: 2, y1: 7, x2: 26, y2: 7, class: `line line-${s.kind}` }, icon);
      if (s.colour) line.style.stroke = s.colour;
      item.appendChild(document.createTextNode(` ${s.label}`));
    }
    if (!withMarkers) return;
    for (const state of Object.keys(SHAPES)) {
      const item = html("li", "", undefined, list);
      const icon = el("svg", { width: 18, height: 18, "aria-hidden": "true" }, item);
      const g = el("g", { class: `marker marker-${state}`, transform: "translate(9 9)" }, icon);
      el("path", { d: SHAPES[state] }, g);
      item.appendChild(document.createTextNode(` ${STATE_WORDS[state]} checkpoint`));
    }
  }

  function describe(marker) {
    const lines = [
      [marker.name, "tip-title"],
      [`step ${marker.step} · ${STATE_WORDS[marker.state]}`],
      [`train loss ${format(marker.train_loss)} · eval loss ${format(marker.eval_loss)}`],
      [`${marker.size_human}${marker.ready ? "" : " · " + (marker.reason || "not ready")}`],
    ];
    return lines;
  }

  function draw(figure, feed) {
    const series = seriesOf(feed);
    const markers = markersOf(feed);
    figure.replaceChildren();
    const width = Math.max(figure.clientWidth, 280);
    const height = Math.round(Math.min(Math.max(width * 0.42, 220), 380));
    const all = series.flatMap((s) => s.points).concat(markers.map((m) => [m.step, m.y]));
    if (!all.length) {
      html("p", "empty", "Nothing logged yet: the curves appear with the first logged loss.", figure);
      return;
    }
    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
    [y0, y1] = [y0 - pad, y1 + pad];
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = height - MARGIN.top - MARGIN.bottom;
    const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
    const sy = (y) => MARGIN.top + (1 - (y - y0) / (y1 - y0)) * plotH;

    const svg = el("svg", {
      viewBox: `0 0 ${width} ${height}`, width, height, role: "group", class: "plot",
      "aria-label": `Loss by step, ${series.map((s) => `${s.label}: ${s.points.length} points`).join(", ")}` +
        (markers.length ? `, ${markers.length} checkpoints` : ""),
    }, figure);
    const grid = el("g", { class: "grid" }, svg);
    for (const t of niceTicks(y0, y1, 5)) {
      el("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: sy(t), y2: sy(t) }, grid);
      el("text", { x: MARGIN.left - 8, y: sy(t), class: "tick y" }, grid).textContent = format(t);
    }
    for (const t of niceTicks(x0, x1, Math.max(2, Math.floor(plotW / 90)))) {
      el("line", { x1: sx(t), x2: sx(t), y1: MARGIN.top, y2: MARGIN.top + plotH, class: "v" }, grid);
      el("text", { x: sx(t), y: MARGIN.top + plotH + 16, class: "tick x" }, grid).textContent = format(t);
    }
    el("text", { x: MARGIN.left + plotW / 2, y: height - 6, class: "axis-label" }, svg).textContent = "step";
    el("text", {
      x: 14, y: MARGIN.top + plotH / 2, class: "axis-label",
      transform: `rotate(-90 14 ${MARGIN.top + plotH / 2})`,
    }, svg).textContent = feed.evaluations && feed.evaluations.length ? "loss, evaluations" : "loss";

    series.forEach((s) => {
      if (!s.points.length) return;
      const line = el("polyline", {
        class: `line line-${s.kind}`, "data-count": s.points.length,
        points: s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "),
      }, svg);
      if (s.colour) line.style.stroke = s.colour;  // one colour per job when comparing
      if ((s.kind === "eval" || s.kind === "evaluation") && s.points.length <= 400) {
        const dots = el("g", { class: `dots dots-${s.kind}`, "data-label": s.label }, svg);
        for (const [x, y] of s.points) {
          const dot = el("circle", { cx: sx(x), cy: sy(y), r: 3 }, dots);
          if (s.colour) dot.style.fill = s.colour;
        }
      }
    });

    const tip = html("div", "tip", undefined, figure);
    tip.setAttribute("role", "status");
    tip.hidden = true;
    const layer = el("g", { class: "markers" }, svg);
    for (const marker of markers) {
      const g = el("a", {
        href: marker.url, class: `marker marker-${marker.state}`, "data-step": marker.step,
        "data-state": marker.state, transform: `translate(${sx(marker.step).toFixed(1)} ${sy(marker.y).toFixed(1)})`,
        "aria-label": `${marker.name}, step ${marker.step}, ${STATE_WORDS[marker.state]}`,
      }, layer);
      el("path", { d: SHAPES[marker.state] }, g);
      const show = () => {
        tip.replaceChildren();
        for (const [text, cls] of describe(marker)) html("div", cls || "", text, tip);
        tip.hidden = false;
        const left = Math.min(sx(marker.step) + 12, width - tip.offsetWidth - 4);
        tip.style.left = `${Math.max(left, 4)}px`;
        tip.style.top = `${Math.max(sy(marker.y) - tip.offsetHeight - 10, 0)}px`;
      };
      g.addEventListener("mouseenter", show);
      g.addEventListener("focus", show);
      g.addEventListener("mouseleave", () => { tip.hidden = true; });
      g.addEventListener("blur", () => { tip.hidden = true; });
    }
    legend(figure, series, Boolean(feed.markers));
    figure.dataset.drawn = String(Date.now());
  }

  async function load(figure) {
    const response = await fetch(figure.dataset.feed, { credentials: "same-origin" });
    if (response.status === 401) {
      window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
      return null;
    }
    if (!response.ok) throw new Error(`feed answered ${response.status}`);
    return response.json();
  }

  async function start() {
    const figure = document.getElementById("chart");
    if (!figure || !figure.dataset.feed) return;
    let feed = null;
    const refresh = async () => {
      try {
        feed = (await load(figure)) || feed;
        if (feed) draw(figure, feed);
      } catch (error) {
        figure.dataset.error = String(error);
      }
      const running = feed && (feed.job ? feed.job.status === "Running" : feed.jobs.some((j) => j.status === "Running"));
      const every = Number(figure.dataset.refresh) || 0;
      if (running && every > 0) setTimeout(refresh, document.hidden ? every * 4 : every);
    };
    await refresh();
    let pending = 0;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => feed && draw(figure, feed), 150);
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
