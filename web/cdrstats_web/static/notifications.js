// Notifications page: asks before a channel is deleted.
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var text = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (text && !window.confirm(text)) e.preventDefault();
  });
})();
