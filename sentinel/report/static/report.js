/* sentinel backtest report: draws every series of the embedded data with lightweight-charts (inlined above). */
(function () {
  "use strict";
  const LWC = window.LightweightCharts;
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const LINE_COLOURS = ["#2962ff", "#ff6d00", "#00897b", "#8e24aa", "#c62828", "#6d4c41", "#0097a7", "#7cb342"];
  const charts = [];

  function lineSeries(chart, line, i, pane) {
    const s = chart.addSeries(LWC.LineSeries, {
      color: LINE_COLOURS[i % LINE_COLOURS.length], lineWidth: 1, title: line.label,
      priceLineVisible: false, lastValueVisible: false,
    }, pane);
    s.setData(line.points.map(([t, v]) => ({ time: t, value: v })));
    return s;
  }

  function draw(series) {
    const box = document.getElementById(series.id);
    const chart = LWC.createChart(box, {
      height: box.clientHeight || 520, layout: { background: { color: "#ffffff" }, textColor: "#222" },
      timeScale: { timeVisible: true, secondsVisible: series.tf.endsWith("s") },
      rightPriceScale: { scaleMargins: { top: 0.08, bottom: 0.08 } },
    });
    const candles = chart.addSeries(LWC.CandlestickSeries, {
      upColor: "#26a69a", downColor: "#ef5350", wickUpColor: "#26a69a", wickDownColor: "#ef5350", borderVisible: false,
    });
    candles.setData(series.candles.map(([t, o, h, l, c, v, partial]) => (partial
      ? { time: t, open: o, high: h, low: l, close: c, color: "#b0bec5", wickColor: "#b0bec5" }
      : { time: t, open: o, high: h, low: l, close: c })));
    const volume = chart.addSeries(LWC.HistogramSeries, { priceFormat: { type: "volume" }, color: "#90a4ae" }, 1);
    volume.setData(series.candles.map(([t, o, h, l, c, v]) => ({
      time: t, value: v, color: c >= o ? "rgba(38,166,154,0.6)" : "rgba(239,83,80,0.6)" })));
    const panes = { price: 0, volume: 1, oscillator: 2 };
    series.lines.forEach((line, i) => lineSeries(chart, line, i, panes[line.pane]));
    series.levels.forEach(([label, value]) => candles.createPriceLine({
      price: value, color: "#9e9e9e", lineWidth: 1, lineStyle: LWC.LineStyle.Dashed, axisLabelVisible: true,
      title: label }));
    const markers = LWC.createSeriesMarkers(candles, series.markers.map((m) => ({
      time: m.t, position: "atPriceMiddle", price: m.price, shape: "circle", color: m.colour, text: m.text,
      size: 1.4 })));
    const panesNow = chart.panes();
    if (panesNow.length > 1) panesNow[1].setHeight(90);
    if (panesNow.length > 2) panesNow[2].setHeight(110);
    chart.timeScale().fitContent();
    charts.push({ id: series.id, chart, candles, markers, series });
  }

  data.series.forEach(draw);
  window.sentinelReport = { charts, data };
})();
