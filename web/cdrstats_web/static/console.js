// CDR-Stats console: theme, tenant switcher, and the tab's one server-sent-event stream.
// Pages listen to "cdrstats:cdr", "cdrstats:live" and "cdrstats:resync" events on document.
(function () {
  "use strict";
  var root = document.documentElement;
  document.querySelectorAll("[data-theme-toggle]").forEach(function (b) {
    b.addEventListener("click", function () {
      var next = root.getAttribute("data-bs-theme") === "dark" ? "light" : "dark";
      root.setAttribute("data-bs-theme", next);
      localStorage.setItem("cdrstats-theme", next);
      document.dispatchEvent(new CustomEvent("cdrstats:theme", { detail: next }));
    });
  });
  var sw = document.querySelector("[data-tenant-switch]");
  if (sw) {
    sw.addEventListener("change", function () {
      var rest = location.pathname.replace(/^\/t\/\d+\//, "");
      location.href = "/t/" + sw.value + "/" + (location.pathname.indexOf("/t/") === 0 ? rest : "");
    });
  }
  var url = document.body.getAttribute("data-events-url");
  var status = document.getElementById("live-status");
  function setStatus(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = "badge " + cls;
  }
  if (url && window.EventSource) {
    var es = new EventSource(url);
    window.cdrstatsEvents = es;
    es.onopen = function () { setStatus("live", "text-bg-success"); };
    es.onerror = function () { setStatus("reconnecting", "text-bg-warning"); };
    ["cdr", "live", "resync"].forEach(function (name) {
      es.addEventListener(name, function (e) {
        var detail = {};
        try { detail = JSON.parse(e.data); } catch (err) { /* keep {} */ }
        document.dispatchEvent(new CustomEvent("cdrstats:" + name, { detail: detail }));
      });
    });
    window.addEventListener("pagehide", function () { es.close(); });
  }
  window.cdrstats = {
    // fetch JSON; calls fn at most once per `ms` when asked repeatedly (bursts of batches).
    throttled: function (fn, ms) {
      var timer = null, again = false;
      return function () {
        if (timer) { again = true; return; }
        fn();
        timer = setTimeout(function () { timer = null; if (again) { again = false; fn(); } }, ms);
      };
    },
    getJSON: function (u) {
      return fetch(u, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
        .then(function (r) {
          if (!r.ok) {
            return r.json().catch(function () { return {}; }).then(function (b) {
              throw new Error((b && b.error) || (u + ": HTTP " + r.status));
            });
          }
          return r.json();
        });
    },
    // The JSON API for this page's tenant: cdrstats.api("/api/v1/cdrs", {limit: 20}).
    apiURL: function (path, params) {
      var q = new URLSearchParams({ tenant: document.body.getAttribute("data-tenant") || "" });
      Object.keys(params || {}).forEach(function (k) {
        if (params[k] !== "" && params[k] !== null && params[k] !== undefined) q.set(k, params[k]);
      });
      return path + "?" + q.toString();
    },
    api: function (path, params) { return window.cdrstats.getJSON(window.cdrstats.apiURL(path, params)); },
    // The tenant's local date (YYYY-MM-DD) as the server saw it, and date arithmetic on it.
    today: function () { return document.body.getAttribute("data-today"); },
    addDays: function (iso, n) {
      var d = new Date(iso + "T12:00:00Z");
      d.setUTCDate(d.getUTCDate() + n);
      return d.toISOString().slice(0, 10);
    },
    mmss: function (v) {
      if (v === null || v === undefined) return "–";
      var m = Math.floor(v / 60), s = Math.round(v % 60);
      if (s === 60) { m += 1; s = 0; }
      return m + ":" + String(s).padStart(2, "0");
    },
    country: function (code) {
      if (!code) return "unknown";
      try { return new Intl.DisplayNames(undefined, { type: "region" }).of(code) + " (" + code + ")"; }
      catch (e) { return code; }
    }
  };
})();
