// Alerts, on every tenant page: the menu's badge of open alerts, kept current by the tab's event
// stream (`alert` events: an alert opened, acknowledged, snoozed or resolved). On the alerts
// page, the list is fetched again and swapped in, and a new alert is announced.
(function () {
  "use strict";
  var tenant = document.body.getAttribute("data-tenant");
  if (!tenant) return;
  var badge = document.getElementById("alert-badge");
  var live = document.getElementById("alerts-live");
  var announce = document.getElementById("alert-announce");
  function loadBadge() {
    if (!badge) return;
    cdrstats.getJSON("/t/" + tenant + "/alerts/count").then(function (d) {
      badge.textContent = String(d.open);
      badge.hidden = !d.open;
      badge.setAttribute("aria-label", d.open + " open alerts");
    }).catch(function () { /* keep the last figure */ });
  }
  var busy = false, again = false;
  function loadList() {
    if (!live) return;
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.pathname + location.search, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("alerts-live");
        if (fresh) live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () { busy = false; if (again) { again = false; loadList(); } });
  }
  function onAlert(detail) {
    loadBadge();
    loadList();
    if (announce && detail && detail.title && detail.state === "open") {
      announce.textContent = "New alert: " + detail.title;
    }
  }
  var es = window.cdrstatsEvents;
  if (es) {
    es.addEventListener("alert", function (e) {
      var detail = {};
      try { detail = JSON.parse(e.data); } catch (err) { /* keep {} */ }
      document.dispatchEvent(new CustomEvent("cdrstats:alert", { detail: detail }));
      onAlert(detail);
    });
  }
  document.addEventListener("cdrstats:resync", function () { onAlert({}); });
  loadBadge();
})();
