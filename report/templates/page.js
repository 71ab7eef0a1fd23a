// Sorting and filtering of the pages' tables. No network, no inline handlers (the page's
// Content-Security-Policy allows this one script by its hash and nothing else).
(function () {
  "use strict";
  function cellValue(row, index, type) {
    var cell = row.cells[index];
    var raw = cell ? (cell.getAttribute("data-value") || cell.textContent.trim()) : "";
    if (type === "num") {
      var n = parseFloat(raw);
      return isNaN(n) ? -Infinity : n;
    }
    return raw.toLowerCase();
  }
  function sortBy(table, th, index) {
    var type = th.getAttribute("data-type") || "text";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type), y = cellValue(b, index, type);
      return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
    });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (r) { fragment.appendChild(r); });
    body.appendChild(fragment);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener("click", function () { sortBy(table, th, index); });
    });
  });
  function applyFilters(table) {
    var filters = document.querySelectorAll("[data-filter-for='" + table.id + "']");
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var keep = true;
      Array.prototype.forEach.call(filters, function (f) {
        var want = f.value.trim().toLowerCase();
        if (!want) { return; }
        var field = f.getAttribute("data-field");
        var have = field === "*" ? row.textContent.toLowerCase() : (row.getAttribute("data-" + field) || "");
        keep = keep && (field === "*" ? have.indexOf(want) >= 0 : have === want);
      });
      row.classList.toggle("hidden", !keep);
      if (keep) { shown += 1; }
    });
    var counter = document.querySelector("[data-count-for='" + table.id + "']");
    if (counter) { counter.textContent = shown + " of " + table.tBodies[0].rows.length + " tasks shown"; }
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-filter-for]"), function (f) {
    var table = document.getElementById(f.getAttribute("data-filter-for"));
    if (!table) { return; }
    f.addEventListener("input", function () { applyFilters(table); });
    f.addEventListener("change", function () { applyFilters(table); });
  });
}());
