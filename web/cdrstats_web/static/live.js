// Live page: calls in progress (table + per-switch chart) and a tail of arriving CDRs.
// Both are fetched from the JSON API again when the tab's event stream says they changed.
(function () {
  "use strict";
  var root = document.getElementById("live");
  if (!root) return;
  var palette = ["#0d6efd", "#198754", "#d63384", "#fd7e14", "#6f42c1", "#20c997", "#dc3545", "#0dcaf0"];
  var chart = null, calls = [];
  function row(body, cells, rightLast) {
    var tr = document.createElement("tr");
    cells.forEach(function (t, i) {
      var td = document.createElement("td");
      td.textContent = t === null || t === undefined ? "" : String(t);
      if (rightLast && i === cells.length - 1) td.className = "text-end";
      tr.appendChild(td);
    });
    body.appendChild(tr);
    return tr;
  }
  function since(iso) {
    if (!iso) return "";
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }
  function drawCalls() {
    var body = document.querySelector("#live-calls tbody");
    body.replaceChildren();
    if (!calls.length) {
      var tr = row(body, ["No call in progress."]);
      tr.firstChild.colSpan = 7; tr.firstChild.className = "text-body-secondary";
    }
    calls.forEach(function (c) {
      var tr = row(body, [c.switch, c.state, c.caller, c.callee, c.direction, c.src_ip, since(c.answered_at || c.started_at)], true);
      tr.setAttribute("data-call-id", c.call_id);
      var bb = window.cdrstatsBlockButton && cdrstatsBlockButton(c.src_ip, c.switch);
      if (bb) { bb.classList.add("ms-1"); tr.children[5].appendChild(bb); }
    });
  }
  function plot(counts) {
    if (!window.Chart) return;
    if (!chart) {
      chart = new Chart(document.getElementById("live-chart"), {
        type: "line",
        data: { labels: [], datasets: [] },
        options: { responsive: true, maintainAspectRatio: false, animation: false,
                   scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
      });
    }
    var names = {};
    JSON.parse(root.getAttribute("data-switches")).forEach(function (s) { names[s.id] = s.name; });
    chart.data.labels.push(new Date().toLocaleTimeString());
    Object.keys(counts).forEach(function (id) {
      var ds = chart.data.datasets.find(function (d) { return d.switchId === id; });
      if (!ds) {
        var color = palette[chart.data.datasets.length % palette.length];
        ds = { label: names[id] || ("switch " + id), switchId: id, data: chart.data.labels.slice(1).map(function () { return 0; }),
               borderColor: color, backgroundColor: color, stepped: true };
        chart.data.datasets.push(ds);
      }
    });
    chart.data.datasets.forEach(function (ds) { ds.data.push(counts[ds.switchId] || 0); });
    if (chart.data.labels.length > 120) {
      chart.data.labels.shift();
      chart.data.datasets.forEach(function (ds) { ds.data.shift(); });
    }
    chart.update();
  }
  function loadLive() {
    return cdrstats.api("/api/v1/live/calls").then(function (d) {
      calls = d.calls;
      var total = 0;
      Object.keys(d.counts).forEach(function (k) { total += d.counts[k]; });
      document.getElementById("live-total").textContent = String(total);
      drawCalls();
      plot(d.counts);
    });
  }
  function loadTail() {
    return cdrstats.api("/api/v1/cdrs", { limit: 20 }).then(function (d) {
      var body = document.querySelector("#tail tbody");
      body.replaceChildren();
      if (!d.items.length) {
        var tr = row(body, ["No CDR yet."]);
        tr.firstChild.colSpan = 7; tr.firstChild.className = "text-body-secondary";
      }
      d.items.forEach(function (r) {
        var tr = row(body, [r.start_time.slice(11, 19), r["switch"], r.caller, r.callee, r.disposition,
                            r.hangup_cause, r.billsec], true);
        tr.firstChild.className = "text-nowrap";
        tr.firstChild.title = r.start_time;
      });
    });
  }
  setInterval(drawCalls, 1000);  // the "since" column ticks
  document.addEventListener("cdrstats:live", cdrstats.throttled(loadLive, 300));
  document.addEventListener("cdrstats:cdr", cdrstats.throttled(loadTail, 500));
  document.addEventListener("cdrstats:resync", function () { loadLive(); loadTail(); });
  loadLive();
  loadTail();
})();
