// CDR search: the filters of /api/v1/cdrs (kept in the page's query string, so a search can
// be bookmarked), keyset pages ("Load more"), sorting by the API (a column header asks for
// sort=<column>&order=asc|desc and starts from the first page; kept in the URL too), a detail
// view with the switch's raw fields, and export links for the same filters.
(function () {
  "use strict";
  var form = document.getElementById("search-form");
  if (!form) return;
  var body = document.querySelector("#cdr-table tbody");
  var more = document.getElementById("more");
  var caption = document.getElementById("cdr-caption");
  var errorBox = document.getElementById("search-error");
  var rows = [], cursor = null;
  var filters = {};
  new URLSearchParams(location.search).forEach(function (v, k) {
    var el = form.elements.namedItem(k);
    if (el && v !== "") { el.value = v; filters[k] = v; }
  });
  // Match modes matter only with a number.
  ["caller", "callee"].forEach(function (n) { if (!filters[n]) delete filters[n + "_match"]; });
  var exported = Object.assign({}, filters);  // exports are chronological: no sort
  delete exported.sort; delete exported.order;
  document.getElementById("export-csv").href = cdrstats.apiURL("/api/v1/cdrs/export.csv", exported);
  document.getElementById("export-xlsx").href = cdrstats.apiURL("/api/v1/cdrs/export.xlsx", exported);
  var NAMES = { asc: "ascending", desc: "descending" };
  function markSort() {
    var key = filters.sort || "start_time", order = filters.order || "desc";
    document.querySelectorAll("[data-sort]").forEach(function (b) {
      // the header's aria-sort tells assistive technology; the arrow is for the eyes
      var on = b.getAttribute("data-sort") === key;
      b.parentNode.setAttribute("aria-sort", on ? NAMES[order] : "none");
      b.querySelector(".sort-mark").textContent = on ? (order === "asc" ? " ▲" : " ▼") : "";
    });
  }
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
    body.replaceChildren();
    rows.forEach(function (r) {
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
    var key = filters.sort || "start_time", order = filters.order || "desc";
    var how = key === "start_time" ? (order === "desc" ? "newest first" : "oldest first")
      : "by " + key.replace("_", " ") + ", " + NAMES[order];
    caption.textContent = rows.length ? rows.length + " calls shown, " + how + (cursor ? " (more available)" : "") : "No call matches.";
    more.classList.toggle("d-none", !cursor);
  }
  var asked = 0;
  function fetchPage() {
    var params = Object.assign({ limit: 100 }, filters);
    if (cursor) params.cursor = cursor;
    var mine = ++asked;
    return cdrstats.api("/api/v1/cdrs", params).then(function (d) {
      if (mine !== asked) return;  // a newer sort was asked for meanwhile
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
      var current = filters.sort || "start_time", order = filters.order || "desc";
      // the same column again reverses it; a new column starts ascending (start: newest first)
      order = key === current ? (order === "desc" ? "asc" : "desc") : (key === "start_time" ? "desc" : "asc");
      if (key === "start_time" && order === "desc") { delete filters.sort; delete filters.order; }
      else { filters.sort = key; filters.order = order; }
      form.elements.namedItem("sort").value = filters.sort || "";
      form.elements.namedItem("order").value = filters.order || "";
      var q = new URLSearchParams(location.search);
      ["sort", "order"].forEach(function (k) { if (filters[k]) q.set(k, filters[k]); else q.delete(k); });
      history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q.toString() : ""));
      rows = []; cursor = null;
      markSort();
      caption.textContent = "Sorting…";
      fetchPage();
    });
  });
  markSort();
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
