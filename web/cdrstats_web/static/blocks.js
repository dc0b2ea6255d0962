// Blocked IPs: the "block this IP" dialog opened by any [data-block-ip] button (CDR detail, live
// calls, alerts), confirmations of unblock forms, and the blocks page's own refresh: while a
// command waits for its agent the page is fetched again every second (else every 15 s) and its
// live part swapped in, so a block's result shows without a reload.
(function () {
  "use strict";
  var dialog = document.getElementById("block-dialog");
  function openDialog(ip, sw) {
    dialog.querySelector("#bd-ip").value = ip;
    dialog.querySelector("#bd-switch").value = sw || "";
    dialog.querySelector("#bd-switch").readOnly = !!sw;
    dialog.querySelector("[data-block-what]").textContent = ip;
    bootstrap.Modal.getOrCreateInstance(dialog).show();
  }
  // Pages draw their rows with this (cdrs.js, live.js, alerts.js): a button, or nothing for
  // users who may not block (no dialog on their page).
  window.cdrstatsBlockButton = function (ip, sw) {
    if (!dialog || !ip) return null;
    var b = document.createElement("button");
    b.type = "button";
    b.className = "btn btn-sm btn-outline-danger py-0";
    b.textContent = "Block";
    b.setAttribute("data-block-ip", ip);
    b.setAttribute("data-block-switch", sw || "");
    b.setAttribute("aria-label", "Block " + ip + (sw ? " on " + sw : ""));
    return b;
  };
  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-block-ip]");
    if (!b || !dialog) return;
    e.preventDefault();
    e.stopPropagation();
    var ip = b.getAttribute("data-block-ip"), sw = b.getAttribute("data-block-switch");
    var open = b.closest(".modal.show");
    if (open) {  // one modal at a time: close the detail first
      open.addEventListener("hidden.bs.modal", function () { openDialog(ip, sw); }, { once: true });
      bootstrap.Modal.getOrCreateInstance(open).hide();
    } else {
      openDialog(ip, sw);
    }
  }, true);
  document.addEventListener("submit", function (e) {
    var text = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (text && !window.confirm(text)) e.preventDefault();
  });

  var live = document.getElementById("blocks-live");
  if (!live) return;
  var busy = false, timer = null, rounds = 0;
  function schedule() {
    clearTimeout(timer);
    var pending = live.getAttribute("data-pending") === "1";
    timer = setTimeout(refresh, pending ? 1000 : 15000);
  }
  function refresh() {
    if (busy || document.hidden) { schedule(); return; }
    busy = true;
    rounds += 1;
    fetch(location.pathname + location.search, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("blocks-live");
        if (fresh) {
          live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
          live.setAttribute("data-pending", fresh.getAttribute("data-pending"));
        }
      })
      .catch(function () { /* keep what is shown; try again later */ })
      .then(function () { busy = false; if (rounds < 5000) schedule(); });
  }
  document.addEventListener("cdrstats:resync", refresh);
  schedule();
})();
