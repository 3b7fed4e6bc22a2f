// miyaq console: the overview chart (uPlot) and confirmations. No inline
// script anywhere: the pages are served with a strict Content-Security-Policy.
(function () {
  "use strict";
  var SERIES = ["submitted", "started", "completed", "failed"];
  var COLORS = ["#1f77b4", "#9467bd", "#2ca02c", "#d62728"];
  var REFRESH_MS = 2000;

  function chart(box) {
    var plot = null;
    var width = function () { return Math.max(320, box.clientWidth); };
    function draw(data) {
      var columns = [data.t].concat(SERIES.map(function (name) { return data[name]; }));
      if (plot === null) {
        plot = new uPlot({
          width: width(), height: 240,
          series: [{}].concat(SERIES.map(function (name, i) {
            return {label: name + "/s", stroke: COLORS[i], width: 2, points: {show: false}};
          })),
          axes: [{}, {label: "tasks / s", size: 60}],
          scales: {y: {range: function (u, min, max) { return [0, Math.max(1, max * 1.1)]; }}}
        }, columns, box);
        window.addEventListener("resize", function () { plot.setSize({width: width(), height: 240}); });
        box.setAttribute("data-ready", "1");
      } else {
        plot.setData(columns);
      }
      box.setAttribute("data-points", String(data.t.length));
    }
    function load() {
      fetch(box.getAttribute("data-src"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(draw)
        .catch(function (e) { box.setAttribute("data-error", String(e)); });
    }
    load();
    setInterval(function () { if (document.visibilityState === "visible") { load(); } }, REFRESH_MS);
  }

  // <button data-confirm="...">: ask before submitting its form
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("activity-chart");
    if (box && window.uPlot) { chart(box); }
  });
})();
