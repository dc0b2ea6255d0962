// Live page: a tail of arriving CDRs and the live call events of the tenant's agents.
(function () {
  "use strict";
  var table = document.getElementById("tail");
  if (!table) return;
  function load() {
    return cdrstats.getJSON(table.getAttribute("data-url")).then(function (d) {
      var body = table.querySelector("tbody");
      body.replaceChildren();
      d.cdrs.forEach(function (r) {
        var tr = document.createElement("tr");
        [r.start.slice(11, 19), r.switch, r.caller, r.callee, r.disposition, String(r.billsec)].forEach(function (t, i) {
          var td = document.createElement("td");
          td.textContent = t;
          if (i === 5) td.className = "text-end";
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
    });
  }
  var list = document.getElementById("live-events");
  document.addEventListener("cdrstats:live", function (e) {
    var li = document.createElement("li");
    li.textContent = new Date().toLocaleTimeString() + " " + JSON.stringify(e.detail);
    list.prepend(li);
    while (list.children.length > 50) list.removeChild(list.lastChild);
  });
  var refresh = cdrstats.throttled(load, 500);
  document.addEventListener("cdrstats:cdr", refresh);
  document.addEventListener("cdrstats:resync", refresh);
  load();
})();
