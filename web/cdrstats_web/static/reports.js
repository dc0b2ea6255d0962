// Reports: series (hour/day/month), compare days, top countries/destinations and breakdowns,
// each one call to /api/v1/reports/*, shown as a table (and a chart where it helps).
(function () {
  "use strict";
  var form = document.getElementById("report-form");
  if (!form) return;
  var kind = document.getElementById("r-kind"), from = document.getElementById("r-from"),
      to = document.getElementById("r-to"), sw = document.getElementById("r-switch");
  var errorBox = document.getElementById("report-error");
  var chart = null;
  var today = cdrstats.today();
  from.value = cdrstats.addDays(today, -29);
  to.value = today;
  var KPI = [["calls", "Calls"], ["answered", "Answered"], ["asr", "ASR %"], ["ner", "NER %"],
             ["acd", "ACD s"], ["aloc", "ALOC s"], ["minutes", "Minutes"]];
  function table(columns, items, caption) {
    var t = document.getElementById("report-table");
    var head = document.createElement("tr");
    columns.forEach(function (c) {
      var th = document.createElement("th"); th.scope = "col"; th.textContent = c[1]; head.appendChild(th);
    });
    t.tHead.replaceChildren(head);
    var body = t.tBodies[0];
    body.replaceChildren();
    items.forEach(function (it) {
      var tr = document.createElement("tr");
      columns.forEach(function (c) {
        var td = document.createElement("td");
        var v = typeof c[0] === "function" ? c[0](it) : it[c[0]];
        td.textContent = v === null || v === undefined ? "–" : (typeof v === "number" ? v.toLocaleString() : String(v));
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    document.getElementById("report-caption").textContent = caption + " · " + items.length + " rows";
  }
  function plot(labels, sets) {
    var card = document.getElementById("report-chart-card");
    card.classList.toggle("d-none", !labels);
    if (!labels || !window.Chart) return;
    if (chart) chart.destroy();
    chart = new Chart(document.getElementById("report-chart"), {
      type: "bar", data: { labels: labels, datasets: sets },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
                 scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
    });
  }
  function load() {
    var k = kind.value, p = { from: from.value, to: to.value };
    if (sw.value && k !== "country" && k !== "destination") p["switch"] = sw.value;
    var req;
    if (k === "hour" || k === "day" || k === "month") {
      p.granularity = k;
      req = cdrstats.api("/api/v1/reports/series", p).then(function (d) {
        table([["label", "Period"]].concat(KPI).concat([["peak_concurrent", "Peak concurrent"]]), d.buckets, "Per " + k);
        plot(d.buckets.map(function (b) { return b.label; }), [
          { label: "Calls", data: d.buckets.map(function (b) { return b.calls; }), backgroundColor: "rgba(13,110,253,.6)" },
          { label: "Answered", data: d.buckets.map(function (b) { return b.answered; }), backgroundColor: "rgba(25,135,84,.7)" }]);
      });
    } else if (k === "compare") {
      var q = { day: to.value, weeks: 4 };
      if (p["switch"]) q["switch"] = p["switch"];
      req = cdrstats.api("/api/v1/reports/compare", q).then(function (d) {
        var items = d.days.map(function (x) { return Object.assign({ day: x.day }, x.totals || x); });
        table([["day", "Day"]].concat(KPI), items, d.weekday + " " + d.day + " and the same weekday before");
        plot(items.map(function (x) { return x.day; }), [
          { label: "Calls", data: items.map(function (x) { return x.calls; }), backgroundColor: "rgba(13,110,253,.6)" }]);
      });
    } else if (k === "country" || k === "destination") {
      p.by = k; p.limit = 50;
      req = cdrstats.api("/api/v1/reports/top", p).then(function (d) {
        var cols = k === "country" ? [[function (i) { return cdrstats.country(i.country); }, "Country"]]
          : [["prefix", "Prefix"], ["name", "Name"], ["country", "Country"], ["kind", "Kind"]];
        table(cols.concat(KPI).concat([["share", "Share %"]]), d.items, "Top " + k);
        plot(null);
      });
    } else {
      p.by = k;
      req = cdrstats.api("/api/v1/reports/breakdown", p).then(function (d) {
        var cols = { cause: [["cause", "Q.850"], ["name", "Cause"], ["calls", "Calls"], ["minutes", "Minutes"], ["share", "Share %"]],
                     disposition: [["disposition", "Disposition"], ["calls", "Calls"], ["minutes", "Minutes"], ["share", "Share %"]],
                     "switch": [["switch", "Switch"]].concat(KPI),
                     trunk: [["switch", "Switch"], ["trunk", "Trunk"]].concat(KPI) }[k];
        table(cols, d.items, "By " + k);
        plot(null);
      });
    }
    req.then(function () { errorBox.classList.add("d-none"); }).catch(function (e) {
      errorBox.textContent = e.message; errorBox.classList.remove("d-none");
    });
  }
  form.addEventListener("submit", function (e) { e.preventDefault(); load(); });
  kind.addEventListener("change", load);
  document.addEventListener("cdrstats:resync", load);
  load();
})();
