// CSV import: choose or drop a file, preview its first rows as parsed (POST
// /api/v1/imports/preview with the first 64 KiB), map columns to CDR fields, save the mapping as
// a profile, upload (POST /api/v1/imports) and follow the job through the tab's SSE stream
// (`import` events). The job page (/t/{tenant}/import/{job}) uses the progress part only.
(function () {
  "use strict";
  var tenant = document.body.getAttribute("data-tenant");
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var SAMPLE = 64 * 1024;
  var $ = function (id) { return document.getElementById(id); };

  function post(path, body, json) { return send("POST", path, body, json); }
  function send(method, path, body, json) {
    var headers = { "X-CSRF-Token": csrf, "Accept": "application/json" };
    if (json) headers["Content-Type"] = "application/json";
    return fetch(cdrstats.apiURL(path), {
      method: method, body: json ? JSON.stringify(body) : body, headers: headers,
      credentials: "same-origin"
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (doc) {
        if (!r.ok) throw new Error(doc.error || (path + ": HTTP " + r.status));
        return doc;
      });
    });
  }
  function show(el, text) {
    if (!el) return;
    el.textContent = text || "";
    el.classList.toggle("d-none", !text);
  }

  // --- the job: progress bar, counters, summary --------------------------------------------
  var box = $("import-job");
  var job = null;             // the job being shown: {id, file_size, bytes_read, ...}
  var pending = {};           // SSE events seen before the upload answered (by job id)
  var seen = [];              // distinct percentages shown (tests read this)
  window.cdrstatsImport = { seen: seen };

  function percent(doc) {
    if (doc.status === "done") return 100;
    var total = doc.bytes_total || doc.file_size;  // SSE events carry bytes_total
    if (!total || doc.bytes_read == null) return null;
    return Math.min(99, Math.floor(100 * doc.bytes_read / total));
  }
  function fmt(n) { return Number(n || 0).toLocaleString(); }
  function render(doc) {
    if (!box || !job || doc.job_id && doc.job_id !== job.id) return;
    Object.keys(doc).forEach(function (k) { if (k !== "job_id") job[k] = doc[k]; });
    box.classList.remove("d-none");
    $("job-read").textContent = fmt(job.rows_read);
    $("job-imported").textContent = fmt(job.imported);
    $("job-duplicates").textContent = fmt(job.duplicates);
    $("job-rejected").textContent = fmt(job.rejected);
    if (job.file_name) $("job-file").textContent = job.file_name;
    if (job.switch) $("job-switch").textContent = "switch " + job.switch;
    var status = $("job-status");
    status.textContent = job.status;
    status.className = "badge " + (job.status === "done" ? "text-bg-success"
      : job.status === "failed" ? "text-bg-danger" : "text-bg-primary");
    var bar = $("job-bar"), pct = percent(job);
    if (pct === null && job.status === "failed") pct = 0;
    if (pct !== null) {
      bar.style.width = pct + "%";
      bar.textContent = pct + " %";
      $("job-progress").setAttribute("aria-valuenow", String(pct));
      $("job-progress").removeAttribute("aria-valuetext");
      if (seen[seen.length - 1] !== pct) seen.push(pct);
    } else {  // no size known yet: the counters say it all
      bar.style.width = "100%";
      bar.textContent = fmt(job.rows_read) + " rows";
      $("job-progress").setAttribute("aria-valuetext", fmt(job.rows_read) + " rows read");
    }
    var over = job.status !== "running";
    bar.classList.toggle("progress-bar-animated", !over);
    bar.classList.toggle("progress-bar-striped", !over);
    bar.classList.toggle("bg-success", job.status === "done");
    bar.classList.toggle("bg-danger", job.status === "failed");
    show($("job-error"), job.status === "failed" ? job.error || "the import failed" : "");
    var rejects = $("job-rejects");
    rejects.href = cdrstats.apiURL("/api/v1/imports/" + job.id + "/rejects.csv");
    rejects.classList.toggle("d-none", !(over && job.rejected > 0));
    $("job-cdrs").classList.toggle("d-none", !(over && job.imported > 0));
    $("job-link").href = "/t/" + tenant + "/import/" + job.id;
  }
  function load(id) {
    return cdrstats.api("/api/v1/imports/" + id).then(function (doc) {
      if (job && job.id === id) render(doc);
    }).catch(function (e) { show($("job-error"), e.message); });
  }
  function follow(doc) {
    job = { id: doc.id };
    render(doc);
    (pending[doc.id] || []).forEach(render);
    pending = {};
  }
  var refreshJobs = function () {};
  if (window.cdrstatsEvents) {
    window.cdrstatsEvents.addEventListener("import", function (e) {
      var doc = {};
      try { doc = JSON.parse(e.data); } catch (err) { return; }
      if (job && doc.job_id === job.id) render(doc);
      else if (!job) (pending[doc.job_id] = pending[doc.job_id] || []).push(doc);
      if (doc.status !== "running") refreshJobs();
    });
  }
  document.addEventListener("cdrstats:resync", function () { if (job) load(job.id); refreshJobs(); });
  if (box && box.getAttribute("data-job-id")) {
    job = { id: box.getAttribute("data-job-id") };
    load(job.id);
  }

  // --- recent imports ----------------------------------------------------------------------
  var jobsBody = document.querySelector("#jobs tbody");
  if (jobsBody) {
    refreshJobs = cdrstats.throttled(function () {
      cdrstats.api("/api/v1/imports", { limit: 20 }).then(function (doc) {
        jobsBody.replaceChildren();
        doc.imports.forEach(function (j) {
          var tr = document.createElement("tr");
          var td = document.createElement("td"), a = document.createElement("a");
          a.href = "/t/" + tenant + "/import/" + j.id;
          a.textContent = j.file_name;
          td.appendChild(a); tr.appendChild(td);
          [j.switch, (j.started_at || "").slice(0, 19).replace("T", " "), j.status].forEach(function (v) {
            var c = document.createElement("td"); c.textContent = v; tr.appendChild(c);
          });
          [j.imported, j.duplicates, j.rejected].forEach(function (v) {
            var c = document.createElement("td"); c.className = "text-end"; c.textContent = fmt(v); tr.appendChild(c);
          });
          jobsBody.appendChild(tr);
        });
        if (!doc.imports.length) {
          var tr = document.createElement("tr"), td = document.createElement("td");
          td.colSpan = 7; td.className = "text-body-secondary"; td.textContent = "No import yet.";
          tr.appendChild(td); jobsBody.appendChild(tr);
        }
      }).catch(function () { /* the table keeps what it had */ });
    }, 1000);
    refreshJobs();
  }

  // --- upload page: file, preview, mapping --------------------------------------------------
  var input = $("import-file");
  if (!input) return;
  var form = $("mapping-form");
  var file = null, preview = null, guessed = false, timer = null;
  var selects = Array.prototype.slice.call(document.querySelectorAll("[data-field]"));

  function columns() {
    // [{value, label}] of the file's columns: names when the first line names them.
    var n = preview ? (preview.detected.columns || 0) : 0;
    var names = preview && preview.options.header && preview.header ? preview.header : null;
    if (names) n = Math.max(n, names.length);
    var out = [];
    for (var i = 0; i < n; i++) {
      var sample = "";
      var row = preview.rows.find(function (r) { return r.values && r.values[i] !== undefined; });
      if (row) sample = row.values[i];
      var name = names && names[i] ? names[i] : null;
      out.push({ value: name !== null ? "n:" + name : "i:" + (i + 1),
                 label: (name !== null ? name : "column " + (i + 1)) + (sample ? " — " + sample.slice(0, 24) : "") });
    }
    return out;
  }
  function fillSelects() {
    var cols = columns();
    selects.forEach(function (sel) {
      var keep = sel.value;
      sel.replaceChildren(new Option("—", ""));
      cols.forEach(function (c) { sel.appendChild(new Option(c.label, c.value)); });
      if (keep && cols.some(function (c) { return c.value === keep; })) sel.value = keep;
    });
    if (!guessed && preview.guesses) {
      guessed = true;
      selects.forEach(function (sel) {
        var g = preview.guesses[sel.getAttribute("data-field")];
        if (g) sel.value = "n:" + g;
      });
    }
  }
  function ref(value) {
    return value.indexOf("n:") === 0 ? value.slice(2) : parseInt(value.slice(2), 10);
  }
  function mapping() {
    // The mapping options (docs/csv-import.md) the form describes.
    var opts = {};
    document.querySelectorAll("[data-opt]").forEach(function (el) {
      var v = el.value;
      if (v === "") return;
      var k = el.getAttribute("data-opt");
      opts[k] = (v === "true") ? true : (v === "false") ? false : v;
    });
    if (opts.header === undefined && preview) opts.header = !!preview.options.header;
    var fields = {};
    selects.forEach(function (sel) {
      if (!sel.value) return;
      var f = sel.getAttribute("data-field");
      if (f === "key") opts.key = ref(sel.value); else fields[f] = ref(sel.value);
    });
    opts.fields = fields;
    var tf = $("m-time-format").value.trim();
    if (tf) opts.time_format = tf;
    var tz = $("m-timezone").value.trim();
    if (tz) opts.timezone = tz;
    var unit = $("m-duration-unit").value;
    if (unit !== "s") opts.duration_unit = unit;
    return opts;
  }
  function choice() {
    // {profile} or {mapping}, as the API takes them.
    var p = $("m-profile").value;
    return p ? { profile: p } : { mapping: JSON.stringify(mapping()) };
  }
  function renderPreview() {
    var d = preview.detected;
    var delim = { ",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe" }[d.delimiter] || d.delimiter;
    $("detected").textContent = "Detected: " + d.encoding + (d.bom ? " with BOM" : "") + ", " + delim +
      "-separated, " + d.columns + " columns, " + (d.header ? "a header line" : "no header line") +
      (d.decimal_comma ? ", decimal commas" : "") + ".";
    fillSelects();
    show($("preview-problem"), preview.problem || "");
    var table = $("preview-table");
    var cols = columns();
    var head = document.createElement("tr");
    ["Line", "Status"].concat(cols.map(function (c) { return c.label.split(" — ")[0]; })).forEach(function (t) {
      var th = document.createElement("th"); th.scope = "col"; th.textContent = t; head.appendChild(th);
    });
    table.tHead.replaceChildren(head);
    var body = table.tBodies[0];
    body.replaceChildren();
    var ok = 0;
    preview.rows.slice(0, 10).forEach(function (r) {
      var tr = document.createElement("tr");
      var line = document.createElement("td"); line.textContent = r.line; tr.appendChild(line);
      var st = document.createElement("td");
      if (r.cdr) {
        ok += 1;
        st.textContent = "✓ " + r.cdr.start.replace("T", " ").slice(0, 19) + " UTC · " + r.cdr.duration + " s";
        st.className = "text-success-emphasis text-nowrap";
      } else {
        st.textContent = "✗ " + (r.reason || "not mapped");
        st.className = "text-danger-emphasis";
      }
      tr.appendChild(st);
      cols.forEach(function (c, i) {
        var td = document.createElement("td");
        td.textContent = r.values && r.values[i] !== undefined ? r.values[i] : "";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    $("preview-caption").textContent = "The first " + Math.min(10, preview.rows.length) +
      " rows as the import will read them: " + ok + " map to a CDR.";
    table.setAttribute("data-ok", String(ok));
  }
  function runPreview() {
    if (!file) return;
    var fd = new FormData();
    fd.append("file", file.slice(0, SAMPLE), file.name);
    fd.append("complete", file.size <= SAMPLE ? "true" : "false");
    if (preview) {
      var c = choice();
      Object.keys(c).forEach(function (k) { fd.append(k, c[k]); });
    }
    return post("/api/v1/imports/preview", fd).then(function (doc) {
      preview = doc;
      show($("preview-error"), "");
      form.classList.remove("d-none");
      renderPreview();
    }).catch(function (e) {
      show($("preview-error"), file.name + ": " + e.message);
      form.classList.add("d-none");
    });
  }
  function later() { clearTimeout(timer); timer = setTimeout(runPreview, 250); }
  function choose(f) {
    if (!f) return;
    file = f; preview = null; guessed = false;
    runPreview();
  }
  input.addEventListener("change", function () { choose(input.files[0]); });
  var zone = $("drop-zone");
  ["dragenter", "dragover"].forEach(function (n) {
    zone.addEventListener(n, function (e) { e.preventDefault(); zone.classList.add("bg-body-secondary"); });
  });
  ["dragleave", "drop"].forEach(function (n) {
    zone.addEventListener(n, function () { zone.classList.remove("bg-body-secondary"); });
  });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });
  form.addEventListener("change", function (e) {
    if (e.target.id === "m-profile") $("map-card").classList.toggle("d-none", !!e.target.value);
    if (e.target.id !== "profile-name" && e.target.id !== "m-switch") later();
  });
  $("m-time-format").addEventListener("input", later);

  // Saved profiles in the picker (a saved one can be deleted).
  var saved = [];
  function offerDelete() {
    var button = $("delete-profile");
    if (button) button.classList.toggle("d-none", saved.indexOf($("m-profile").value) < 0);
  }
  function loadProfiles() {
    return cdrstats.api("/api/v1/import-profiles").then(function (doc) {
      var group = $("saved-profiles");
      group.replaceChildren();
      saved = doc.profiles.filter(function (p) { return !p.builtin; }).map(function (p) { return p.name; });
      saved.forEach(function (name) { group.appendChild(new Option(name, name)); });
      offerDelete();
    }).catch(function () { /* built-in ones stay */ });
  }
  loadProfiles();
  $("m-profile").addEventListener("change", offerDelete);
  if ($("delete-profile")) $("delete-profile").addEventListener("click", function () {
    var name = $("m-profile").value;
    var status = $("profile-status");
    if (!window.confirm("Delete the profile “" + name + "”? Imports made with it keep their mapping.")) return;
    send("DELETE", "/api/v1/import-profiles/" + encodeURIComponent(name)).then(function () {
      $("m-profile").value = "";
      $("map-card").classList.remove("d-none");
      return loadProfiles();
    }).then(function () {
      status.textContent = "Profile “" + name + "” deleted.";
      status.className = "small text-success-emphasis";
    }).catch(function (e) {
      status.textContent = e.message;
      status.className = "small text-danger-emphasis";
    });
  });
  $("save-profile").addEventListener("click", function () {
    var name = $("profile-name").value.trim();
    var status = $("profile-status");
    if (!name) { status.textContent = "Give the profile a name first."; $("profile-name").focus(); return; }
    post("/api/v1/import-profiles", { name: name, options: mapping() }, true).then(loadProfiles).then(function () {
      status.textContent = "Saved as profile “" + name + "”.";
      status.className = "small text-success-emphasis";
    }).catch(function (e) {
      status.textContent = e.message;
      status.className = "small text-danger-emphasis";
    });
  });

  // Import.
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var sw = $("m-switch");
    if (!sw.value.trim()) {
      show($("import-error"), "Name the switch or source these calls come from.");
      sw.focus();
      return;
    }
    var fd = new FormData();
    var c = choice();
    Object.keys(c).forEach(function (k) { fd.append(k, c[k]); });
    fd.append("switch", sw.value.trim());
    fd.append("file", file, file.name);
    var button = $("start-import");
    button.disabled = true;
    show($("import-error"), "");
    job = null; pending = {};
    post("/api/v1/imports", fd).then(function (doc) {
      follow(doc);
      refreshJobs();
      box.scrollIntoView({ block: "nearest" });
      $("job-status").focus && $("job-status").focus();
    }).catch(function (err) {
      show($("import-error"), err.message);
    }).finally(function () { button.disabled = false; });
  });
})();
