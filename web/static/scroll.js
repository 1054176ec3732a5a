// cargohold operator UI: tables that scroll sideways (on a phone) can be scrolled from the keyboard.
// A table wider than its box scrolls inside it (ui.css); keyboard users can only scroll a box that takes
// focus, so such a table gets tabindex=0 (and loses it again when the window is wide enough).
"use strict";

(function () {
  function mark() {
    document.querySelectorAll("table").forEach(function (table) {
      if (table.scrollWidth > table.clientWidth + 1) {
        if (!table.hasAttribute("tabindex")) { table.tabIndex = 0; table.dataset.scrollFocus = "1"; }
      } else if (table.dataset.scrollFocus) {
        table.removeAttribute("tabindex");
        delete table.dataset.scrollFocus;
      }
    });
  }
  var pending = 0;
  function later() { cancelAnimationFrame(pending); pending = requestAnimationFrame(mark); }
  document.addEventListener("DOMContentLoaded", mark);
  window.addEventListener("resize", later);
  // Pages that fill tables as they go (an import's report) are marked again when their content changes.
  new MutationObserver(later).observe(document.documentElement, {childList: true, subtree: true});
})();
