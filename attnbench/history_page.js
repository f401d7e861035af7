// The history page: filters, the steps table, and one card of plots per cell, drawn when it scrolls into view.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("history-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 380, HEIGHT = 160;
  const PAD = { left: 58, right: 10, top: 18, bottom: 28 };
  const COLORS = {
    forward_time: "#0969da", backward_time: "#bc4c00", mem_before_backward_bytes: "#1a7f37",
    peak_bytes: "#8250df", saved_bytes: "#6e7781", max_error: "#bf3989",
  };
  const LEGEND = {
    forward_time: "forward", backward_time: "backward", mem_before_backward_bytes: "before bwd",
    peak_bytes: "peak", saved_bytes: "saved", max_error: "max error",
  };
  // one plot per kind of figure; each draws the cell's metrics of that kind
  const PLOTS = [
    { kind: "time", title: "median time, IQR band" },
    { kind: "memory", title: "memory" },
    { kind: "error", title: "max error vs float64 (log)", log: true },
  ];
  const SHOWN_STEPS = 500; // rows of the steps table drawn at most
  const POINTS_UP_TO = 80; // commits up to which each point gets a dot

  // -- numbers

  function scaled(value, units) {
    if (value === null || value === undefined) return "–";
    for (const [unit, scale] of units) {
      if (Math.abs(value) >= scale) return (value / scale).toPrecision(4) + " " + unit;
    }
    const [unit, scale] = units[units.length - 1];
    return (value / scale).toPrecision(4) + " " + unit;
  }
  const DURATION = [["s", 1], ["ms", 1e-3], ["µs", 1e-6], ["ns", 1e-9]];
  const SIZE = [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10], ["B", 1]];
  function format(kind, value) {
    if (value === null || value === undefined) return "–";
    if (kind === "time") return scaled(value, DURATION);
    if (kind === "memory") return scaled(value, SIZE);
    return value.toExponential(2);
  }
  const short = (id) => id.slice(0, 10);
  const day = (time) => time.slice(0, 10);

  // -- elements

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- the cards

  const stepsByCell = new Map();
  for (const step of DATA.steps) {
    const id = step.env + "|" + step.cell;
    if (!stepsByCell.has(id)) stepsByCell.set(id, []);
    stepsByCell.get(id).push(step);
  }
  const cards = [];
  const cardById = new Map();
  const main = document.getElementById("cells");
  DATA.environments.forEach((env, envIndex) => {
    for (const cell of env.cells) {
      const id = envIndex + "|" + cell.key;
      const steps = stepsByCell.get(id) || [];
      const node = el("div", { class: "card", id: "cell-" + envIndex + "-" + cell.key });
      node.appendChild(el("h3", {}, cell.key));
      if (DATA.environments.length > 1) node.appendChild(el("div", { class: "env" }, env.label));
      const badges = el("div", { class: "badges" });
      for (const step of steps) {
        badges.appendChild(el("span", { class: step.verdict },
          `${step.verdict} at ${short(step.commit)}: ${DATA.metrics[step.metric].label} ×${step.ratio}`));
      }
      if (cell.status) {
        const latest = cell.status.filter((s) => s !== null).slice(-1)[0];
        if (latest && latest !== "ok") badges.appendChild(el("span", { class: "status" }, "latest status: " + latest));
      }
      node.appendChild(badges);
      node.appendChild(el("div", { class: "plots" }));
      main.appendChild(node);
      const card = { env, envIndex, cell, steps, node, rendered: false };
      node.historyCard = card;
      cards.push(card);
      cardById.set(id, card);
    }
  });

  // -- plots

  function drawPlot(card, plot) {
    const { env, cell } = card;
    const metrics = Object.keys(cell.series).filter((m) => DATA.metrics[m].kind === plot.kind);
    if (!metrics.length) return null;
    const n = env.commits.length;
    const innerW = WIDTH - PAD.left - PAD.right, innerH = HEIGHT - PAD.top - PAD.bottom;
    const x = (i) => PAD.left + (n === 1 ? innerW / 2 : (i * innerW) / (n - 1));
    const values = [];
    for (const m of metrics) {
      const s = cell.series[m];
      for (const key of ["v", "q1", "q3", "lo", "hi"]) {
        for (const v of s[key] || []) if (v !== null && (!plot.log || v > 0)) values.push(v);
      }
    }
    if (!values.length) return null;
    const tr = plot.log ? (v) => Math.log10(v) : (v) => v;
    let lo = Math.min(...values.map(tr)), hi = Math.max(...values.map(tr));
    if (hi === lo) { const pad = Math.abs(hi) * 0.05 || 1; lo -= pad; hi += pad; }
    const margin = (hi - lo) * 0.06;
    lo -= margin; hi += margin;
    const y = (v) => PAD.top + innerH * (1 - (tr(v) - lo) / (hi - lo));
    const ok = (v) => v !== null && v !== undefined && (!plot.log || v > 0);

    const root = svg("svg", { class: "plot", width: WIDTH, height: HEIGHT, viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      "data-kind": plot.kind });
    root.appendChild(svg("text", { x: PAD.left, y: 12, class: "title" }, plot.title));
    // y grid and labels: bottom, middle, top
    for (const f of [0, 0.5, 1]) {
      const t = lo + (hi - lo) * (0.06 / 1.12 + f * (1 / 1.12));
      const yy = PAD.top + innerH * (1 - (t - lo) / (hi - lo));
      root.appendChild(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: yy, y2: yy, class: "grid" }));
      const value = plot.log ? 10 ** t : t;
      root.appendChild(svg("text", { x: PAD.left - 4, y: yy + 3, "text-anchor": "end" }, format(plot.kind, value)));
    }
    root.appendChild(svg("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "axis" }));
    root.appendChild(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: HEIGHT - PAD.bottom,
      y2: HEIGHT - PAD.bottom, class: "axis" }));
    // x labels: the first and last commit (and the middle one)
    const ticks = n > 2 ? [0, Math.floor((n - 1) / 2), n - 1] : [...Array(n).keys()];
    ticks.forEach((i, k) => {
      const anchor = k === 0 && ticks.length > 1 ? "start" : k === ticks.length - 1 && ticks.length > 1 ? "end" : "middle";
      root.appendChild(svg("text", { x: x(i), y: HEIGHT - PAD.bottom + 12, "text-anchor": anchor },
        short(env.commits[i].id).slice(0, 7)));
      root.appendChild(svg("text", { x: x(i), y: HEIGHT - PAD.bottom + 23, "text-anchor": anchor },
        day(env.commits[i].time)));
    });
    // steps of this plot's metrics
    for (const step of card.steps) {
      if (!metrics.includes(step.metric)) continue;
      const line = svg("line", { x1: x(step.at), x2: x(step.at), y1: PAD.top, y2: HEIGHT - PAD.bottom,
        class: "step-" + step.verdict });
      line.appendChild(svg("title", {}, `${step.verdict}: ${DATA.metrics[step.metric].label} ×${step.ratio} at ${short(step.commit)}`));
      root.appendChild(line);
    }
    // bands (IQR of the rounds; spread of the runs of one commit), then lines
    for (const m of metrics) {
      const s = cell.series[m];
      for (const [a, b, opacity] of [["q1", "q3", 0.22], ["lo", "hi", 0.12]]) {
        if (!s[a]) continue;
        for (const run of runsOf(n, (i) => ok(s[a][i]) && ok(s[b][i]))) {
          const top = run.map((i) => `${x(i)},${y(s[b][i])}`);
          const bottom = run.slice().reverse().map((i) => `${x(i)},${y(s[a][i])}`);
          root.appendChild(svg("polygon", { points: top.concat(bottom).join(" "), fill: COLORS[m],
            "fill-opacity": opacity, stroke: "none" }));
        }
      }
      for (const run of runsOf(n, (i) => ok(s.v[i]))) {
        const d = run.map((i, k) => `${k ? "L" : "M"}${x(i).toFixed(1)},${y(s.v[i]).toFixed(1)}`).join("");
        root.appendChild(svg("path", { d, fill: "none", stroke: COLORS[m], "stroke-width": 1.5, class: "series",
          "data-metric": m }));
        if (n <= POINTS_UP_TO) {
          for (const i of run) root.appendChild(svg("circle", { cx: x(i), cy: y(s.v[i]), r: 2, fill: COLORS[m] }));
        }
      }
    }
    // legend
    const legend = svg("text", { x: WIDTH - PAD.right, y: 12, "text-anchor": "end" });
    metrics.forEach((m) => {
      legend.appendChild(svg("tspan", { style: `fill:${COLORS[m]}`, dx: 6 }, LEGEND[m] || m));
    });
    root.appendChild(legend);
    // hover: the nearest commit's numbers
    const guide = svg("line", { y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "guide", visibility: "hidden" });
    root.appendChild(guide);
    const overlay = svg("rect", { x: PAD.left, y: PAD.top, width: innerW, height: innerH, fill: "transparent" });
    overlay.addEventListener("mousemove", (event) => {
      const box = root.getBoundingClientRect();
      const px = ((event.clientX - box.left) * WIDTH) / box.width;
      const i = n === 1 ? 0 : Math.max(0, Math.min(n - 1, Math.round(((px - PAD.left) * (n - 1)) / innerW)));
      guide.setAttribute("x1", x(i));
      guide.setAttribute("x2", x(i));
      guide.setAttribute("visibility", "visible");
      showTooltip(event, describe(card, metrics, i));
    });
    overlay.addEventListener("mouseleave", () => { guide.setAttribute("visibility", "hidden"); hideTooltip(); });
    root.appendChild(overlay);
    return root;
  }

  // consecutive indices where present(i) holds
  function runsOf(n, present) {
    const runs = [];
    let current = [];
    for (let i = 0; i < n; i++) {
      if (present(i)) current.push(i);
      else if (current.length) { runs.push(current); current = []; }
    }
    if (current.length) runs.push(current);
    return runs;
  }

  function describe(card, metrics, i) {
    const commit = card.env.commits[i];
    const lines = [`commit ${short(commit.id)}  ${commit.time.replace("T", " ").slice(0, 19)}`];
    lines.push(`${commit.runs} run(s)` + (commit.branch ? `, branch ${commit.branch}` : "") +
      (commit.planted ? ", planted regression" : ""));
    for (const m of metrics) {
      const s = card.cell.series[m], kind = DATA.metrics[m].kind;
      let text = `${DATA.metrics[m].label}: ${format(kind, s.v[i])}`;
      if (s.q1 && s.q1[i] !== null) text += `  (IQR ${format(kind, s.q1[i])}–${format(kind, s.q3[i])})`;
      if (s.lo && s.lo[i] !== null && s.lo[i] !== s.hi[i]) text += `  runs ${format(kind, s.lo[i])}–${format(kind, s.hi[i])}`;
      lines.push(text);
    }
    if (card.cell.status && card.cell.status[i] && card.cell.status[i] !== "ok") lines.push("status: " + card.cell.status[i]);
    for (const step of card.steps) {
      if (step.at === i && metrics.includes(step.metric)) {
        lines.push(`${step.verdict} begins here: ${DATA.metrics[step.metric].label} ×${step.ratio} (${step.noise}σ)`);
      }
    }
    return lines.join("\n");
  }

  const tooltip = document.getElementById("tooltip");
  function showTooltip(event, text) {
    tooltip.textContent = text;
    tooltip.hidden = false;
    const left = Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8);
    tooltip.style.left = left + "px";
    tooltip.style.top = event.clientY + 14 + "px";
  }
  function hideTooltip() { tooltip.hidden = true; }

  function render(card) {
    if (card.rendered) return;
    card.rendered = true;
    const holder = card.node.querySelector(".plots");
    for (const plot of PLOTS) {
      const node = drawPlot(card, plot);
      if (node) holder.appendChild(node);
    }
  }

  // draw cards as they come into view (and a screen ahead)
  const observer = "IntersectionObserver" in window
    ? new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (entry.isIntersecting) { render(entry.target.historyCard); observer.unobserve(entry.target); }
      }
    }, { rootMargin: "600px 0px" })
    : null;
  for (const card of cards) observer ? observer.observe(card.node) : render(card);

  function renderVisible() {
    const limit = window.innerHeight + 600;
    let drawn = 0;
    for (const card of cards) {
      if (card.node.hidden) continue;
      const box = card.node.getBoundingClientRect();
      if (box.bottom >= -600 && box.top <= limit) { render(card); drawn++; }
    }
    return drawn;
  }

  // -- filters

  const axisValues = {};
  for (const axis of DATA.axes) {
    const values = new Set(cards.map((c) => String(c.cell.params[axis])));
    axisValues[axis] = [...values].sort((a, b) => (isNaN(a) || isNaN(b) ? a.localeCompare(b) : a - b));
  }
  const filterHolder = document.getElementById("filter-groups");
  const checked = {};
  function group(name, values, labelOf) {
    const fs = el("fieldset", { "data-axis": name });
    fs.appendChild(el("legend", {}, name));
    checked[name] = new Set(values);
    for (const value of values) {
      const label = el("label");
      const box = el("input", { type: "checkbox", value, "data-axis": name });
      box.checked = true;
      box.addEventListener("change", () => {
        box.checked ? checked[name].add(value) : checked[name].delete(value);
        applyFilters();
      });
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + (labelOf ? labelOf(value) : value)));
      fs.appendChild(label);
    }
    filterHolder.appendChild(fs);
  }
  if (DATA.environments.length > 1) {
    group("environment", DATA.environments.map((_, i) => String(i)), (i) => DATA.environments[i].label);
  } else {
    document.body.classList.add("one-env");
  }
  for (const axis of DATA.axes) group(axis, axisValues[axis]);
  const onlySteps = el("input", { type: "checkbox", id: "only-steps" });
  const onlyLabel = el("label", { for: "only-steps" });
  onlyLabel.appendChild(onlySteps);
  onlyLabel.appendChild(document.createTextNode(" only cells with a step"));
  const more = el("fieldset", {});
  more.appendChild(el("legend", {}, "show"));
  more.appendChild(onlyLabel);
  filterHolder.appendChild(more);
  onlySteps.addEventListener("change", applyFilters);

  function visible(card) {
    if (onlySteps.checked && !card.steps.length) return false;
    if (checked.environment && !checked.environment.has(String(card.envIndex))) return false;
    return DATA.axes.every((axis) => checked[axis].has(String(card.cell.params[axis])));
  }

  const stepRows = [];
  function applyFilters() {
    let shown = 0;
    for (const card of cards) {
      card.node.hidden = !visible(card);
      if (!card.node.hidden) shown++;
    }
    for (const { row, card } of stepRows) row.hidden = !card || card.node.hidden;
    document.getElementById("shown").textContent = `${shown} of ${cards.length} cells shown`;
    renderVisible();
  }

  // -- the steps table and the summary

  const body = document.querySelector("#steps tbody");
  for (const step of DATA.steps.slice(0, SHOWN_STEPS)) {
    const card = cardById.get(step.env + "|" + step.cell);
    const kind = DATA.metrics[step.metric].kind;
    const row = el("tr", { class: step.verdict, "data-cell": step.cell, "data-metric": step.metric });
    const link = el("a", { href: "#cell-" + step.env + "-" + step.cell }, step.cell);
    const cells = [short(step.commit), day(step.time), DATA.environments[step.env].label, link,
      DATA.metrics[step.metric].label, format(kind, step.before), format(kind, step.after), "×" + step.ratio,
      `${step.noise}σ` + (step.p !== null ? `, p=${step.p.toPrecision(2)}` : ""), step.verdict];
    cells.forEach((value, k) => {
      const td = el("td", { class: k === 2 ? "env-col" : k === 9 ? "verdict" : "" });
      value instanceof Node ? td.appendChild(value) : (td.textContent = value);
      row.appendChild(td);
    });
    body.appendChild(row);
    stepRows.push({ row, card });
  }
  if (!DATA.steps.length) {
    const row = el("tr");
    row.appendChild(el("td", { colspan: 10 }, "no step found"));
    body.appendChild(row);
  } else if (DATA.steps.length > SHOWN_STEPS) {
    const row = el("tr");
    row.appendChild(el("td", { colspan: 10 }, `… and ${DATA.steps.length - SHOWN_STEPS} older steps`));
    body.appendChild(row);
  }
  const commits = DATA.environments.reduce((total, env) => total + env.commits.length, 0);
  const regressions = DATA.steps.filter((s) => s.verdict === "regression").length;
  document.getElementById("summary").textContent =
    `${DATA.runs} runs at ${commits} commits in ${DATA.environments.length} environment(s) ` +
    (DATA.environments.length === 1 ? `(${DATA.environments[0].label}) ` : "") +
    `· ${cards.length} cells · ${DATA.steps.length} steps (${regressions} regressions) · ` +
    `${DATA.skipped.length} runs skipped · generated ${DATA.generated}`;
  if (DATA.skipped.length) {
    const section = document.getElementById("skipped");
    section.appendChild(el("h2", {}, "Runs skipped"));
    const table = el("table");
    const head = el("tr");
    head.appendChild(el("th", {}, "run"));
    head.appendChild(el("th", {}, "why"));
    table.appendChild(head);
    for (const s of DATA.skipped) {
      const row = el("tr");
      row.appendChild(el("td", {}, s.path));
      const why = el("td", {}, s.reason);
      why.style.whiteSpace = "normal";
      row.appendChild(why);
      table.appendChild(row);
    }
    section.appendChild(table);
  }

  applyFilters();
  window.historyPage = { ready: true, renderVisible, cells: cards.length, applyFilters };
})();
