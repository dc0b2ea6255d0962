// Dashboard: KPI tiles, calls and concurrent-call charts, top countries, hangup causes.
// Figures come from the JSON API (/api/v1/reports/*, /api/v1/live/calls) and are fetched
// again whenever the tab's event stream says a batch was stored or live calls changed.
(function () {
  "use strict";
  var box = document.getElementById("dashboard");
  if (!box) return;
  var period = document.getElementById("period");
  var sw = document.getElementById("switch");
  var charts = {};

  function span() {
    var today = cdrstats.today();
    var p = period.value;
    if (p === "yesterday") { var y = cdrstats.addDays(today, -1); return { from: y, to: y, granularity: "hour" }; }
    if (p === "7d") return { from: cdrstats.addDays(today, -6), to: today, granularity: "day" };
    if (p === "30d") return { from: cdrstats.addDays(today, -29), to: today, granularity: "day" };
    return { from: today, to: today, granularity: "hour" };
  }
  function params(extra) {
    var s = span();
    var out = { from: s.from, to: s.to };
    if (sw.value) out["switch"] = sw.value;
    return Object.assign(out, extra || {});
  }
  var fmt = {
    calls: function (v) { return v.toLocaleString(); },
    asr: function (v) { return v === null ? "–" : v.toFixed(1) + " %"; },
    acd: cdrstats.mmss,
    minutes: function (v) { return v.toLocaleString(undefined, { maximumFractionDigits: 1 }); }
  };
  function change(now, before) {
    if (now === null || before === null || before === undefined || before === 0) return null;
    return 100 * (now - before) / before;
  }
  function tile(name, now, before) {
    document.getElementById("kpi-" + name).textContent = fmt[name](now);
    var ch = document.getElementById("kpi-" + name + "-change");
    var pct = change(now, before);
    if (pct === null) {
      ch.textContent = "no previous figure";
      ch.className = "small kpi-change text-body-secondary";
    } else {
      var up = pct >= 0;
      ch.textContent = (up ? "▲ +" : "▼ ") + pct.toFixed(1) + " % vs previous period";
      ch.className = "small kpi-change " + (up ? "up" : "down");
    }
  }
  function chart(id, type, datasets) {
    if (!window.Chart) return null;
    if (!charts[id]) {
      charts[id] = new Chart(document.getElementById(id), {
        type: type,
        data: { labels: [], datasets: datasets },
        options: { responsive: true, maintainAspectRatio: false, animation: false,
                   scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
      });
    }
    return charts[id];
  }
  function shareBar(pct) {
    var outer = document.createElement("div");
    outer.className = "progress";
    outer.setAttribute("role", "progressbar");
    outer.setAttribute("aria-valuenow", String(pct || 0));
    outer.setAttribute("aria-valuemin", "0");
    outer.setAttribute("aria-valuemax", "100");
    outer.setAttribute("aria-label", (pct || 0) + " % of calls");
    var inner = document.createElement("div");
    inner.className = "progress-bar";
    inner.style.width = (pct || 0) + "%";
    outer.appendChild(inner);
    return outer;
  }
  function fill(tableId, rows, cells) {
    var body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren();
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = 5; td.className = "text-body-secondary"; td.textContent = "No calls in this period.";
      tr.appendChild(td); body.appendChild(tr);
    }
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      cells(r).forEach(function (c) {
        var td = document.createElement("td");
        if (c instanceof Node) td.appendChild(c); else td.textContent = c;
        if (typeof c === "string" && /^[\d.,–%\s:]+$/.test(c)) td.className = "text-end text-nowrap";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }
  // World map (chartjs-chart-geo): country shapes and the ISO code table are loaded once.
  var geo = null, map = null;
  function geoData() {
    if (!geo) {
      geo = Promise.all([
        cdrstats.getJSON("/static/vendor/countries-110m.json"),
        cdrstats.getJSON("/static/vendor/iso-3166-codes.json")
      ]).then(function (all) {
        var numeric = {};
        all[1].forEach(function (c) { numeric[c[0]] = c[2]; });
        return { features: ChartGeo.topojson.feature(all[0], all[0].objects.countries).features, numeric: numeric };
      });
    }
    return geo;
  }
  function drawMap(items) {
    if (!window.ChartGeo || !window.Chart) return;
    geoData().then(function (g) {
      var calls = {};
      items.forEach(function (r) { if (r.country && g.numeric[r.country]) calls[g.numeric[r.country]] = r.calls; });
      var data = g.features.map(function (f) { return { feature: f, value: calls[f.id] || 0 }; });
      if (!map) {
        map = new Chart(document.getElementById("world-map"), {
          type: "choropleth",
          data: { labels: g.features.map(function (f) { return f.properties.name; }),
                  datasets: [{ label: "Calls", outline: g.features, data: data }] },
          options: { responsive: true, maintainAspectRatio: false, animation: false, showOutline: true,
                     plugins: { legend: { display: false } },
                     scales: { projection: { axis: "x", projection: "equalEarth" },
                               color: { axis: "x", quantize: 5, legend: { position: "bottom-right", align: "right" } } } }
        });
      } else {
        map.data.datasets[0].data = data;
        map.update();
      }
      document.getElementById("world-map").setAttribute("data-countries", String(Object.keys(calls).length));
    }).catch(function () { /* the tables still show the figures */ });
  }
  function loadLive() {
    return cdrstats.api("/api/v1/live/calls", sw.value ? { "switch": sw.value } : {}).then(function (d) {
      var n = 0;
      Object.keys(d.counts).forEach(function (k) { if (!sw.value || k === sw.value) n += d.counts[k]; });
      document.getElementById("kpi-concurrent").textContent = n.toLocaleString();
    });
  }
  var lastPeak = null;
  function load() {
    var s = span();
    return Promise.all([
      cdrstats.api("/api/v1/reports/dashboard", params()),
      cdrstats.api("/api/v1/reports/series", params({ granularity: s.granularity })),
      cdrstats.api("/api/v1/reports/top", { from: s.from, to: s.to, by: "country", limit: 300 }),
      cdrstats.api("/api/v1/reports/breakdown", params({ by: "cause", limit: 8 })),
      cdrstats.api("/api/v1/reports/breakdown", params({ by: "disposition", limit: 8 })),
      loadLive()
    ]).then(function (all) {
      var d = all[0], series = all[1], top = all[2], causes = all[3], dispositions = all[4];
      ["calls", "asr", "acd", "minutes"].forEach(function (k) { tile(k, d.current[k], d.previous[k]); });
      lastPeak = d.current.peak_concurrent;
      var pc = document.getElementById("kpi-concurrent-change");
      pc.textContent = "peak in period: " + lastPeak + " (before: " + d.previous.peak_concurrent + ")";
      pc.className = "small kpi-change text-body-secondary";
      var labels = series.buckets.map(function (b) {
        return s.granularity === "hour" ? b.label.slice(11, 16) : b.label;
      });
      var c = chart("calls-chart", "bar", [
        { label: "Calls", data: [], backgroundColor: "rgba(13,110,253,.6)" },
        { label: "Answered", data: [], backgroundColor: "rgba(25,135,84,.7)" }
      ]);
      if (c) {
        c.data.labels = labels;
        c.data.datasets[0].data = series.buckets.map(function (b) { return b.calls; });
        c.data.datasets[1].data = series.buckets.map(function (b) { return b.answered; });
        c.update();
      }
      var k = chart("conc-chart", "line", [
        { label: "Peak concurrent calls", data: [], borderColor: "rgba(111,66,193,1)", backgroundColor: "rgba(111,66,193,.2)", fill: true, stepped: true }
      ]);
      if (k) {
        k.data.labels = labels;
        k.data.datasets[0].data = series.buckets.map(function (b) { return b.peak_concurrent; });
        k.update();
      }
      drawMap(top.items);
      fill("countries", top.items.slice(0, 8), function (r) {
        return [cdrstats.country(r.country), r.calls.toLocaleString(), r.asr === null ? "–" : r.asr.toFixed(1) + " %",
                r.minutes.toLocaleString(), shareBar(r.share)];
      });
      fill("dispositions", dispositions.items, function (r) {
        return [r.disposition, r.calls.toLocaleString(), shareBar(r.share)];
      });
      fill("causes", causes.items, function (r) {
        return [String(r.cause), r.name, r.calls.toLocaleString(), shareBar(r.share)];
      });
      document.getElementById("updated").textContent = new Date().toLocaleTimeString();
      box.setAttribute("data-loaded", String(Date.now()));
    }).catch(function (e) { document.getElementById("updated").textContent = "failed: " + e.message; });
  }
  var refresh = cdrstats.throttled(load, 1000);
  var refreshLive = cdrstats.throttled(loadLive, 500);
  period.addEventListener("change", load);
  sw.addEventListener("change", load);
  document.addEventListener("cdrstats:cdr", refresh);
  document.addEventListener("cdrstats:live", refreshLive);
  document.addEventListener("cdrstats:resync", refresh);
  load();
})();
