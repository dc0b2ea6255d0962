// Rule editor: shows the parameters of the chosen kind only (the others are disabled, so they
// are not sent), and asks before a rule is deleted.
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var text = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (text && !window.confirm(text)) e.preventDefault();
  });
  var form = document.getElementById("rule-form");
  if (!form) return;
  var byKind = JSON.parse(form.getAttribute("data-kind-params"));
  var kind = form.elements.namedItem("kind");
  function show() {
    var wanted = byKind[kind.value] || [];
    form.querySelectorAll("[data-param]").forEach(function (box) {
      var on = wanted.indexOf(box.getAttribute("data-param")) >= 0;
      box.hidden = !on;
      box.querySelectorAll("input, select").forEach(function (el) { el.disabled = !on; });
    });
  }
  kind.addEventListener("change", show);
  show();
})();
