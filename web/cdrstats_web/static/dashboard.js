// Dashboard: KPI tiles, calls chart and hangup causes; refreshed on every stored batch.
(function () {
  "use strict";
  var box = document.getElementById("dashboard");
  if (!box) return;
  var period = document.getElementById("period");
  var sw = document.getElementById("switch");
  var chart = null;
  var fmt = {
    calls: function (v) { return v.toLocaleString(); },
    answered: function (v) { return v.toLocaleString(); },
    asr: function (v) { return v === null ? "–" : v.toFixed(1) + " %"; },
    acd_s: function (v) { return v === null ? "–" : Math.floor(v / 60) + ":" + String(Math.round(v % 60)).padStart(2, "0"); },
    minutes: function (v) { return v.toLocaleString(undefined, { maximumFractionDigits: 1 }); }
  };
  function tile(name, k) {
    var el = document.getElementById("kpi-" + name);
    var ch = document.getElementById("kpi-" + name + "-change");
    if (!el) return;
    el.textContent = fmt[name](k.value);
    if (k.change_pct === null) {
      ch.textContent = "no previous figure";
      ch.className = "small kpi-change text-body-secondary";
    } else {
      var up = k.change_pct >= 0;
      ch.textContent = (up ? "▲ +" : "▼ ") + k.change_pct.toFixed(1) + " % vs previous period";
      ch.className = "small kpi-change " + (up ? "up" : "down");
    }
  }
  function draw(series) {
    if (!window.Chart) return;
    if (!chart) {
      chart = new Chart(document.getElementById("calls-chart"), {
        type: "bar",
        data: { labels: [], datasets: [
          { label: "Calls", data: [], backgroundColor: "rgba(13,110,253,.6)" },
          { label: "Answered", data: [], backgroundColor: "rgba(25,135,84,.7)" }
        ] },
        options: { responsive: true, maintainAspectRatio: false, animation: false,
                   scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
      });
    }
    chart.data.labels = series.labels;
    chart.data.datasets[0].data = series.calls;
    chart.data.datasets[1].data = series.answered;
    chart.update();
  }
  function causes(rows) {
    var body = document.querySelector("#causes tbody");
    body.replaceChildren();
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      [r.disposition, r.cause === null ? "" : String(r.cause), r.calls.toLocaleString()].forEach(function (t, i) {
        var td = document.createElement("td");
        td.textContent = t;
        if (i === 2) td.className = "text-end";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }
  function load() {
    var u = box.getAttribute("data-url") + "?period=" + encodeURIComponent(period.value) +
            "&switch=" + encodeURIComponent(sw.value);
    return cdrstats.getJSON(u).then(function (d) {
      Object.keys(d.kpis).forEach(function (k) { tile(k, d.kpis[k]); });
      draw(d.series);
      causes(d.causes);
      document.getElementById("updated").textContent = new Date().toLocaleTimeString();
      box.setAttribute("data-loaded", String(Date.now()));
    }).catch(function (e) { document.getElementById("updated").textContent = "failed: " + e.message; });
  }
  var refresh = cdrstats.throttled(load, 1000);
  period.addEventListener("change", load);
  sw.addEventListener("change", load);
  document.addEventListener("cdrstats:cdr", refresh);
  document.addEventListener("cdrstats:resync", refresh);
  load();
})();
