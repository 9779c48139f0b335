// The charts of the dashboard, the series page and the trace page, drawn with Apache ECharts (npm
// `echarts`, pinned in package.json, served by the app at /static/vendor/echarts.min.js: no CDN).
// ECharts is loaded only when a chart comes near the screen, so pages paint first and stay light.
// Every element with data-chart="..." is drawn by the function of that name; texts come from the
// JSON block #chart-strings. No inline style or script anywhere (the Content-Security-Policy):
// tooltips are plain text built here, escaped.
(function () {
  "use strict";
  var SRC = "/static/vendor/echarts.min.js";
  var GREEN = "#2f7d32", RED = "#b42318", MUTED = "#667085";
  var STATUS_COLOURS = {
    alert: "#b42318", failing: "#e8590c", silent: "#b54708", online: "#2f7d32",
    inactive: "#98a2b3", revoked: "#475467", no_device: "#d0d5dd"
  };
  var loading = null;
  var S = {};

  function loadECharts() {
    if (window.echarts) { return Promise.resolve(window.echarts); }
    if (!loading) {
      loading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = SRC;
        s.onload = function () { resolve(window.echarts); };
        s.onerror = function () { reject(new Error("cannot load " + SRC)); };
        document.head.appendChild(s);
      });
    }
    return loading;
  }

  function esc(x) {
    return String(x === null || x === undefined ? "" : x).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function fmt(x) {
    if (x === null || x === undefined || isNaN(x)) { return S.no_data || "–"; }
    return (Math.round(x * 100) / 100).toLocaleString();
  }

  function json(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) { throw new Error(url + ": " + r.status); }
      return r.json();
    });
  }

  function whenVisible(el, fn) {
    if (!("IntersectionObserver" in window)) { fn(); return; }
    var io = new IntersectionObserver(function (entries) {
      if (entries.some(function (e) { return e.isIntersecting; })) { io.disconnect(); fn(); }
    }, { rootMargin: "300px" });
    io.observe(el);
  }

  function draw(el, option) {
    return loadECharts().then(function (ec) {
      var chart = ec.getInstanceByDom(el) || ec.init(el, null, { renderer: "canvas" });
      option.aria = { enabled: true };
      option.animation = false;
      chart.setOption(option, true);
      el.classList.add("drawn");
      el.setAttribute("data-drawn", "1");
      window.addEventListener("resize", function () { chart.resize(); });
      return chart;
    });
  }

  function failed(el, err) {
    el.classList.add("failed");
    el.setAttribute("data-drawn", "failed");
    el.textContent = String(err && err.message ? err.message : err);
  }

  // ------------------------------------------------------------ indicators: trend and villages

  var charts = {};

  charts.indicators = function (el) {
    var data = json("indicator-data");
    var select = document.getElementById("indicator-select");
    var trendEl = el.querySelector(".chart-trend");
    var barsEl = el.querySelector(".chart-villages");
    if (!data || !select) { return; }
    function show() {
      var ind = data.indicators.filter(function (i) { return i.indicator === select.value; })[0];
      if (!ind) { return; }
      var unit = ind.unit || "";
      draw(trendEl, {
        title: { text: S.trend + " · " + ind.name, textStyle: { fontSize: 13 } },
        grid: { left: 48, right: 16, top: 40, bottom: 28 },
        tooltip: { trigger: "axis", formatter: function (p) {
          return esc(p[0].axisValue) + ": " + esc(fmt(p[0].value)) + " " + esc(unit);
        } },
        xAxis: { type: "category", data: ind.trend.map(function (t) { return t.period; }) },
        yAxis: { type: "value", name: unit, scale: true },
        series: [{ type: "line", connectNulls: false, symbolSize: 7, itemStyle: { color: GREEN },
                   data: ind.trend.map(function (t) { return t.value; }) }]
      });
      var rows = (data.rankings[ind.indicator] || []).slice().reverse();
      barsEl.style.height = Math.max(160, 26 * rows.length + 50) + "px";
      draw(barsEl, {
        title: { text: S.villages + " · " + ind.name, textStyle: { fontSize: 13 } },
        grid: { left: 96, right: 48, top: 36, bottom: 20 },
        tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, formatter: function (p) {
          var v = p[0].value;
          return esc(p[0].axisValue) + ": " + esc(v === null || v === undefined ? S.no_data : fmt(v) + " " + unit);
        } },
        xAxis: { type: "value", name: unit },
        yAxis: { type: "category", data: rows.map(function (r) { return r.name || r.village; }) },
        series: [{ type: "bar", itemStyle: { color: "#7cb87f" },
                   label: { show: true, position: "right", formatter: function (p) {
                     return p.value === null || p.value === undefined ? S.no_data : fmt(p.value);
                   } },
                   data: rows.map(function (r) { return r.value; }) }]
      });
    }
    select.addEventListener("change", show);
    show();
  };

  // ------------------------------------------------------------ the county map

  function bbox(features, codes) {
    var b = [180, 90, -180, -90];
    features.forEach(function (f) {
      if (codes && codes.indexOf(f.id) < 0) { return; }
      var g = f.geometry, polys = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
      polys.forEach(function (poly) { poly[0].forEach(function (p) {
        b[0] = Math.min(b[0], p[0]); b[1] = Math.min(b[1], p[1]);
        b[2] = Math.max(b[2], p[0]); b[3] = Math.max(b[3], p[1]);
      }); });
    });
    return b[0] <= b[2] ? b : null;
  }

  charts.map = function (el) {
    getJSON(el.getAttribute("data-src")).then(function (m) {
      return loadECharts().then(function (ec) {
        var features = m.boundaries.features;
        var labels = {};
        features.forEach(function (f) { labels[f.id] = f.properties.label; });
        ec.registerMap("village-area", m.boundaries);
        var box = bbox(features, m.counties) ||
          bbox([{ geometry: { type: "Polygon", coordinates: [m.points.map(function (p) { return [p.lon, p.lat]; })] } }]);
        var regions = features.map(function (f) {
          var level = f.properties.level, county = m.counties.indexOf(f.id) >= 0;
          return {
            name: f.id,
            itemStyle: {
              areaColor: county ? "#eef6ee" : (level === "village" ? "rgba(47,125,50,0.10)" :
                level === "township" ? "rgba(47,125,50,0.04)" : "#f8f9fa"),
              borderColor: level === "province" || level === "city" ? "#98a2b3" : county ? GREEN : "#b6c2b7",
              borderWidth: county ? 2 : level === "city" ? 1.2 : 0.8,
              borderType: f.properties.illustrative ? "dashed" : "solid"
            },
            label: { show: level === "village" || level === "county", formatter: function () { return labels[f.id]; },
                     fontSize: level === "county" ? 13 : 10, color: MUTED }
          };
        });
        var byStatus = {};
        m.points.forEach(function (p) { (byStatus[p.status] = byStatus[p.status] || []).push(p); });
        var series = m.statuses.filter(function (s) { return byStatus[s]; }).map(function (s) {
          return {
            name: S.status[s] || s, type: "scatter", coordinateSystem: "geo", symbolSize: 11,
            symbol: "circle", itemStyle: { color: STATUS_COLOURS[s], borderColor: "#fff", borderWidth: 1 },
            data: byStatus[s].map(function (p) { return { name: p.id, value: [p.lon, p.lat], point: p }; })
          };
        });
        var alerted = m.points.filter(function (p) { return p.alerts.length; });
        if (alerted.length) {
          series.push({
            name: S.status.alert, type: "scatter", coordinateSystem: "geo", symbol: "pin", symbolSize: 30,
            symbolOffset: [0, "-45%"], itemStyle: { color: RED }, z: 5,
            data: alerted.map(function (p) { return { name: p.id, value: [p.lon, p.lat], point: p }; })
          });
        }
        var pad = 0.04;
        var chart = ec.getInstanceByDom(el) || ec.init(el, null, { renderer: "canvas" });
        chart.setOption({
          aria: { enabled: true },
          animation: false,
          tooltip: { trigger: "item", formatter: function (x) {
            if (x.data && x.data.point) {
              var p = x.data.point;
              var lines = [esc((S.kinds[p.kind] || p.kind) + " " + p.id) + " · " + esc(p.village_name),
                           esc(S.status[p.status] || p.status)];
              p.devices.forEach(function (d) { lines.push(esc(d.id + " (" + d.kind + "): " + (S.status[d.status] || d.status))); });
              p.alerts.forEach(function (a) { lines.push("⚠ " + esc(a.kind + " " + a.device + " " + a.value)); });
              return lines.join("<br>");
            }
            return esc(labels[x.name] || x.name);
          } },
          legend: { bottom: 0, type: "scroll" },
          geo: {
            map: "village-area", roam: true, regions: regions,
            boundingCoords: box ? [[box[0] - pad, box[3] + pad], [box[2] + pad, box[1] - pad]] : null,
            itemStyle: { areaColor: "#f8f9fa", borderColor: "#b6c2b7" },
            emphasis: { disabled: true }, select: { disabled: true },
            label: { show: false }
          },
          series: series
        }, true);
        chart.on("click", function (x) {
          if (x.data && x.data.point) {
            var p = x.data.point;
            window.location.href = "/dashboard/series?" + p.kind + "=" + encodeURIComponent(p.id);
          }
        });
        window.addEventListener("resize", function () { chart.resize(); });
        el.classList.add("drawn");
        el.setAttribute("data-drawn", "1");
        el.setAttribute("data-points", String(m.points.length));
        window.villageMap = chart;  // for the browser tests: the chart's instance
      });
    }).catch(function (e) { failed(el, e); });
  };

  // ------------------------------------------------------------ device health over time

  charts.health = function (el) {
    getJSON(el.getAttribute("data-src")).then(function (h) {
      return draw(el, {
        tooltip: { trigger: "axis", formatter: function (p) {
          return esc(p[0].axisValue) + p.map(function (s) { return "<br>" + esc(s.seriesName + ": " + s.value); }).join("");
        } },
        legend: { top: 0 },
        grid: { left: 40, right: 40, top: 32, bottom: 48 },
        dataZoom: [{ type: "inside" }, { type: "slider", height: 16, bottom: 6 }],
        xAxis: { type: "category", data: h.days },
        yAxis: [{ type: "value", minInterval: 1, name: S.reporting }, { type: "value", minInterval: 1, name: S.dead_letters }],
        series: [
          { name: S.reporting, type: "line", step: "middle", itemStyle: { color: GREEN }, data: h.reporting,
            markLine: { symbol: "none", lineStyle: { color: MUTED, type: "dashed" },
                        label: { formatter: S.active + " " + h.active }, data: [{ yAxis: h.active }] } },
          { name: S.dead_letters, type: "bar", yAxisIndex: 1, itemStyle: { color: "#e8590c" }, data: h.dead_letters }
        ]
      });
    }).catch(function (e) { failed(el, e); });
  };

  // ------------------------------------------------------------ a place's time series (rollups)

  function seriesOption(s) {
    var t = s.values.map(function (v) { return v[0]; });
    var mean = s.values.map(function (v, i) { return [t[i], v[1]]; });
    var lo = s.values.map(function (v, i) { return [t[i], v[2]]; });
    var span = s.values.map(function (v, i) { return [t[i], v[3] - v[2]]; });
    var lines = (s.thresholds || []).map(function (x) {
      return { yAxis: x.value, label: { formatter: S.threshold + " " + (x.bound === "min" ? "≥ " : "≤ ") + x.value + " " + s.unit } };
    });
    return {
      title: { text: s.kind + " · " + s.metric + " (" + s.unit + ")", textStyle: { fontSize: 13 } },
      tooltip: { trigger: "axis", formatter: function (p) {
        var i = p[0].dataIndex, v = s.values[i];
        return esc(new Date(v[0]).toLocaleString()) + "<br>" + esc(S.mean + ": " + fmt(v[1]) + " " + s.unit) +
          "<br>" + esc(S.band + ": " + fmt(v[2]) + " – " + fmt(v[3])) + "<br>n = " + esc(v[4]);
      } },
      legend: { top: 22, data: [S.mean, S.band] },
      grid: { left: 52, right: 24, top: 56, bottom: 64 },
      dataZoom: [{ type: "inside" }, { type: "slider", height: 18, bottom: 10 }],
      xAxis: { type: "time" },
      yAxis: { type: "value", scale: true, name: s.unit },
      series: [
        { name: "lo", type: "line", stack: "band", symbol: "none", lineStyle: { opacity: 0 }, data: lo, silent: true },
        { name: S.band, type: "line", stack: "band", symbol: "none", lineStyle: { opacity: 0 },
          areaStyle: { color: "rgba(47,125,50,0.18)" }, itemStyle: { color: "rgba(47,125,50,0.35)" }, data: span, silent: true },
        { name: S.mean, type: "line", symbol: "none", itemStyle: { color: GREEN }, data: mean,
          markLine: lines.length ? { symbol: "none", lineStyle: { color: RED, type: "dashed" }, data: lines } : undefined }
      ]
    };
  }

  charts.series = function (el) {
    getJSON(el.getAttribute("data-src")).then(function (ts) {
      var holder = el;
      holder.textContent = "";
      var shown = ts.series.filter(function (s) { return s.values.length; });
      holder.setAttribute("data-series", String(shown.length));
      if (!shown.length) {
        holder.textContent = S.no_data_period;
        holder.classList.add("empty");
        holder.setAttribute("data-drawn", "empty");
        return null;
      }
      return Promise.all(shown.map(function (s) {
        var box = document.createElement("div");
        box.className = "chart series-chart";
        box.setAttribute("data-metric", s.metric);
        holder.appendChild(box);
        return draw(box, seriesOption(s));
      })).then(function () { holder.setAttribute("data-drawn", "1"); });
    }).catch(function (e) { failed(el, e); });
  };

  // ------------------------------------------------------------ the trace page's growth curve

  charts.growth = function (el) {
    var g = JSON.parse(el.getAttribute("data-growth"));
    var series = [], lines = [];
    g.series.forEach(function (s, i) {
      series.push({ name: s.name, type: "line", symbol: "none", yAxisIndex: i, data: s.points,
                    itemStyle: { color: i ? "#1570ef" : GREEN },
                    markLine: s.threshold === null || s.threshold === undefined ? undefined :
                      { symbol: "none", lineStyle: { color: RED, type: "dashed" }, label: { formatter: S.threshold + " " + s.threshold },
                        data: [{ yAxis: s.threshold }] } });
      lines.push({ type: "value", name: s.unit, scale: true, position: i ? "right" : "left" });
    });
    draw(el, {
      tooltip: { trigger: "axis", formatter: function (p) {
        return esc(p[0].axisValueLabel) + p.map(function (x) { return "<br>" + esc(x.seriesName + ": " + fmt(x.value[1])); }).join("");
      } },
      legend: { top: 0 },
      grid: { left: 44, right: series.length > 1 ? 44 : 16, top: 30, bottom: 28 },
      xAxis: { type: "time" },
      yAxis: lines,
      series: series
    }).then(function () {
      var fallback = el.parentNode.querySelector(".growth-svg");
      if (fallback) { fallback.classList.add("replaced"); }
    });
  };

  function start() {
    S = json("chart-strings") || {};
    S.status = S.status || {};
    S.kinds = S.kinds || {};
    Array.prototype.forEach.call(document.querySelectorAll("[data-chart]"), function (el) {
      var fn = charts[el.getAttribute("data-chart")];
      if (fn) { whenVisible(el, function () { fn(el); }); }
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
