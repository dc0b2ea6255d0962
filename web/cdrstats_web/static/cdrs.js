// CDR search: the filters of /api/v1/cdrs (kept in the page's query string, so a search can
// be bookmarked), keyset pages ("Load more"), sorting of the rows shown, a detail view with the
// switch's raw fields, and export links for the same filters.
(function () {
  "use strict";
  var form = document.getElementById("search-form");
  if (!form) return;
  var body = document.querySelector("#cdr-table tbody");
  var more = document.getElementById("more");
  var caption = document.getElementById("cdr-caption");
  var errorBox = document.getElementById("search-error");
  var rows = [], cursor = null, sortKey = null, sortDir = 1;
  var filters = {};
  new URLSearchParams(location.search).forEach(function (v, k) {
    var el = form.elements.namedItem(k);
    if (el && v !== "") { el.value = v; filters[k] = v; }
  });
  // Match modes matter only with a number.
  ["caller", "callee"].forEach(function (n) { if (!filters[n]) delete filters[n + "_match"]; });
  document.getElementById("export-csv").href = cdrstats.apiURL("/api/v1/cdrs/export.csv", filters);
  document.getElementById("export-xlsx").href = cdrstats.apiURL("/api/v1/cdrs/export.xlsx", filters);
  form.addEventListener("submit", function () {
    // Empty fields stay out of the URL.
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el.name && el.value === "") el.disabled = true;
    });
    ["caller", "callee"].forEach(function (n) {
      if (form.elements.namedItem(n).value === "") form.elements.namedItem(n + "_match").disabled = true;
    });
  });
  function cell(tr, text, right) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (right) td.className = "text-end";
    tr.appendChild(td);
  }
  function draw() {
    var shown = rows.slice();
    if (sortKey) {
      shown.sort(function (a, b) {
        var x = a[sortKey], y = b[sortKey];
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * sortDir;
      });
    }
    body.replaceChildren();
    shown.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.setAttribute("role", "button");
      tr.setAttribute("aria-label", "Details of the call from " + r.caller + " to " + r.callee);
      tr.dataset.id = r.id;
      cell(tr, r.start_time.slice(0, 19).replace("T", " "));
      cell(tr, r["switch"]); cell(tr, r.direction); cell(tr, r.caller); cell(tr, r.callee);
      cell(tr, r.dest_country); cell(tr, r.disposition);
      cell(tr, r.hangup_cause, true); cell(tr, r.duration, true); cell(tr, r.billsec, true);
      body.appendChild(tr);
    });
    caption.textContent = rows.length ? rows.length + " calls shown, newest first" + (cursor ? " (more available)" : "") : "No call matches.";
    more.classList.toggle("d-none", !cursor);
  }
  function fetchPage() {
    var params = Object.assign({ limit: 100 }, filters);
    if (cursor) params.cursor = cursor;
    return cdrstats.api("/api/v1/cdrs", params).then(function (d) {
      errorBox.classList.add("d-none");
      rows = rows.concat(d.items);
      cursor = d.next_cursor;
      draw();
    }).catch(function (e) {
      errorBox.textContent = e.message;
      errorBox.classList.remove("d-none");
      caption.textContent = "Search failed.";
    });
  }
  more.addEventListener("click", fetchPage);
  document.querySelectorAll("[data-sort]").forEach(function (b) {
    b.addEventListener("click", function () {
      var key = b.getAttribute("data-sort");
      sortDir = sortKey === key ? -sortDir : 1;
      sortKey = key;
      document.querySelectorAll("#cdr-table th").forEach(function (th) { th.setAttribute("aria-sort", "none"); });
      b.parentNode.setAttribute("aria-sort", sortDir === 1 ? "ascending" : "descending");
      draw();
    });
  });
  var modalEl = document.getElementById("cdr-detail");
  function open(id) {
    cdrstats.api("/api/v1/cdrs/" + encodeURIComponent(id)).then(function (d) {
      var dl = document.getElementById("cdr-fields");
      dl.replaceChildren();
      Object.keys(d).forEach(function (k) {
        if (k === "extra") return;
        var dt = document.createElement("dt"); dt.className = "col-5 col-sm-4"; dt.textContent = k;
        var dd = document.createElement("dd"); dd.className = "col-7 col-sm-8 text-break";
        dd.textContent = d[k] === null ? "–" : String(d[k]);
        var bb = k === "src_ip" && window.cdrstatsBlockButton && cdrstatsBlockButton(d[k], d["switch"]);
        if (bb) { bb.classList.add("ms-2"); dd.appendChild(bb); }
        dl.appendChild(dt); dl.appendChild(dd);
      });
      document.getElementById("cdr-extra").textContent = JSON.stringify(d.extra, null, 2);
      document.getElementById("cdr-detail-title").textContent = "Call " + d.caller + " → " + d.callee;
      bootstrap.Modal.getOrCreateInstance(modalEl).show();
    }).catch(function (e) { errorBox.textContent = e.message; errorBox.classList.remove("d-none"); });
  }
  body.addEventListener("click", function (e) {
    var tr = e.target.closest("tr");
    if (tr && tr.dataset.id) open(tr.dataset.id);
  });
  body.addEventListener("keydown", function (e) {
    var tr = e.target.closest("tr");
    if (tr && tr.dataset.id && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); open(tr.dataset.id); }
  });
  fetchPage();
})();
