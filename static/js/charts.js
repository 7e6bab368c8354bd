// Draws every chart of partials/chart.html with the vendored Chart.js, from its json_script
// payload: {title, unit ("usd": micro-USD, or "count"), stacked, labels, datasets: [{label, data}]}.
// Colours come from the console's CSS variables (css/console.css, css/charts.css), so the
// charts follow light and dark mode, also when the system switches while the page is open.
(() => {
  "use strict";

  const dark = window.matchMedia("(prefers-color-scheme: dark)");
  const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
  const charts = [];

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // micro-USD as "$1.2345": two to six decimals, exact (integer arithmetic, no float rounding).
  const usd = (micros) => {
    const value = Math.round(Number(micros) || 0);
    const sign = value < 0 ? "-" : "";
    const abs = Math.abs(value);
    const whole = Math.floor(abs / 1_000_000).toLocaleString("en-US");
    const frac = String(abs % 1_000_000).padStart(6, "0").replace(/0+$/, "").padEnd(2, "0");
    return `${sign}$${whole}.${frac}`;
  };
  const count = (value) => Math.round(Number(value) || 0).toLocaleString("en-US");

  const theme = () => ({
    text: cssVar("--text"),
    muted: cssVar("--muted"),
    grid: cssVar("--chart-grid"),
    surface: cssVar("--surface"),
    border: cssVar("--border"),
    series: [1, 2, 3, 4, 5, 6].map((n) => cssVar(`--chart-${n}`)),
  });

  const seriesColor = (colors, dataset, index) =>
    dataset.label === "other" ? colors.muted : colors.series[index % colors.series.length];

  // Colours of a chart's config (before it is built) or of a built chart's data and options.
  const applyTheme = ({ data, options }) => {
    const colors = theme();
    data.datasets.forEach((dataset, index) => {
      dataset.backgroundColor = seriesColor(colors, dataset, index);
      dataset.borderColor = seriesColor(colors, dataset, index);
    });
    const { x, y } = options.scales;
    for (const axis of [x, y]) {
      axis.ticks.color = colors.muted;
      axis.grid.color = colors.grid;
      axis.border.color = colors.border;
    }
    options.plugins.legend.labels.color = colors.text;
    const tooltip = options.plugins.tooltip;
    tooltip.backgroundColor = colors.surface;
    tooltip.titleColor = colors.text;
    tooltip.bodyColor = colors.text;
    tooltip.footerColor = colors.text;
    tooltip.borderColor = colors.border;
  };

  const draw = (canvas) => {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source) return;
    const payload = JSON.parse(source.textContent);
    const format = payload.unit === "usd" ? usd : count;
    const config = {
      type: "bar",
      data: {
        labels: payload.labels,
        datasets: payload.datasets.map((dataset) => ({
          label: dataset.label,
          data: dataset.data,
          borderWidth: 0,
          borderRadius: 2,
          maxBarThickness: 36,
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: reducedMotion.matches ? false : { duration: 250 },
        interaction: { mode: "index", intersect: false },
        scales: {
          x: {
            stacked: payload.stacked,
            ticks: { maxRotation: 0, autoSkipPadding: 12 },
            grid: { display: false },
            border: {},
          },
          y: {
            stacked: payload.stacked,
            beginAtZero: true,
            ticks: { callback: format, maxTicksLimit: 6 },
            grid: {},
            border: {},
          },
        },
        plugins: {
          legend: { display: payload.stacked, position: "bottom", labels: { boxWidth: 12 } },
          tooltip: {
            borderWidth: 1,
            callbacks: {
              label: (item) => `${item.dataset.label}: ${format(item.raw)}`,
              footer: (items) =>
                payload.stacked ? `Total: ${format(items.reduce((sum, item) => sum + item.raw, 0))}` : "",
            },
          },
        },
      },
    };
    applyTheme(config);
    charts.push(new window.Chart(canvas, config));
  };

  const start = () => {
    if (!window.Chart) return; // the numbers stay in their tables
    for (const canvas of document.querySelectorAll("canvas[data-chart]")) draw(canvas);
    dark.addEventListener("change", () => {
      for (const chart of charts) {
        applyTheme(chart);
        chart.update("none");
      }
    });
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
