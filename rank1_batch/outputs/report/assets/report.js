// rank1-batch report: the trace explorer. Plain DOM, no library, no network.
// Data: <script id="explorer-data" type="application/json"> (written by rank1_batch.outputs.report).
(function () {
  "use strict";
  var node = document.getElementById("explorer-data");
  if (!node) return;
  var data = JSON.parse(node.textContent);
  var queries = data.queries;
  var metrics = data.metrics || [];
  var search = document.getElementById("query-search");
  var statusFilter = document.getElementById("status-filter");
  var list = document.getElementById("query-list");
  var detail = document.getElementById("query-detail");
  var count = document.getElementById("query-count");
  var current = null;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
  function badge(status) { return el("span", { "class": "st st-" + status }, status); }
  function wanted(c) { return statusFilter.value === "all" || c.st === statusFilter.value; }

  function matches(q, needle) {
    if (!needle) return true;
    return q.id.toLowerCase().indexOf(needle) >= 0 || (q.text || "").toLowerCase().indexOf(needle) >= 0;
  }

  function renderList() {
    var needle = search.value.trim().toLowerCase();
    list.textContent = "";
    var shown = 0;
    queries.forEach(function (q, i) {
      if (!matches(q, needle)) return;
      if (statusFilter.value !== "all" && !q.statuses[statusFilter.value]) return;
      shown += 1;
      var li = el("li", { "data-query-id": q.id, "data-index": i });
      if (current === i) li.className = "active";
      li.appendChild(el("span", { "class": "qid" }, q.id));
      var extra = " · " + q.n + " candidates";
      if (q.metrics && q.metrics.reranked && metrics.length) {
        var m = metrics[0];
        var gain = q.metrics.reranked[m] - q.metrics.first_stage[m];
        extra += " · " + m + " " + (gain >= 0 ? "+" : "") + gain.toFixed(3);
      }
      li.appendChild(document.createTextNode(extra));
      li.appendChild(el("span", { "class": "qt" }, q.text));
      li.addEventListener("click", function () { current = i; renderList(); renderQuery(); });
      list.appendChild(li);
    });
    count.textContent = shown + " of " + queries.length + " embedded queries";
  }

  function renderQuery() {
    detail.textContent = "";
    if (current === null) {
      detail.appendChild(el("p", { "class": "note" }, "Pick a query on the left."));
      return;
    }
    var q = queries[current];
    detail.appendChild(el("h3", { id: "query-title" }, q.id + ": " + q.text));
    var facts = Object.keys(q.statuses).map(function (s) { return s + " " + q.statuses[s]; }).join(", ");
    var line = q.n + " candidates (" + facts + ")";
    if (q.c.length < q.n) line += "; showing " + q.c.length + " (the best ranked, plus every non-complete one)";
    if (q.metrics && q.metrics.reranked) {
      line += ". " + metrics.map(function (m) {
        return m + " " + num(q.metrics.first_stage[m], 3) + " → " + num(q.metrics.reranked[m], 3);
      }).join(", ");
    }
    detail.appendChild(el("p", { "class": "note" }, line));
    var table = el("table", { id: "candidates" });
    var head = el("tr");
    ["rank", "doc_id", "P(true)", "status", "first-stage rank", "qrels", "reasoning tokens"].forEach(function (h) {
      head.appendChild(el("th", null, h));
    });
    table.appendChild(head);
    q.c.forEach(function (c) {
      if (!wanted(c)) return;
      var tr = el("tr", { "class": "cand", "data-doc-id": c.d, "data-status": c.st });
      tr.appendChild(el("td", { "class": "n" }, c.r === null ? "–" : c.r));
      tr.appendChild(el("td", null, c.d));
      tr.appendChild(el("td", { "class": "n" }, num(c.s, 4)));
      var st = el("td"); st.appendChild(badge(c.st));
      if (c.er) st.appendChild(el("span", { "class": "note" }, " " + c.er));
      if (c.tr) st.appendChild(el("span", { "class": "note" }, " truncated"));
      tr.appendChild(st);
      tr.appendChild(el("td", { "class": "n" }, c.ir));
      tr.appendChild(el("td", { "class": c.rel > 0 ? "n rel1" : "n" }, c.rel === null ? "–" : c.rel));
      tr.appendChild(el("td", { "class": "n" }, c.rt));
      tr.addEventListener("click", function () { toggle(tr, c); });
      table.appendChild(tr);
    });
    detail.appendChild(table);
  }

  function toggle(tr, c) {
    var next = tr.nextSibling;
    if (next && next.className === "trace-row") {
      next.parentNode.removeChild(next);
      tr.classList.remove("open");
      return;
    }
    tr.classList.add("open");
    var row = el("tr", { "class": "trace-row" });
    var td = el("td", { colspan: 7 });
    var meta = "status " + c.st + (c.er ? " (" + c.er + ")" : "") + " · logit " + num(c.lg, 3) +
      " · prompt tokens " + c.pt + " · reasoning tokens " + c.rt + " · finish " + (c.fr || "–") +
      (c.tr ? " · passage truncated to fit" : "");
    td.appendChild(el("div", { "class": "note" }, meta));
    td.appendChild(el("h4", null, "Reasoning trace"));
    // Rank1 traces start with the newline after <think>: shown trimmed, kept whole in the data.
    var text = c.t === null || c.t === undefined ? "(no trace)" : (c.t.trim() || "(empty trace)");
    td.appendChild(el("div", { "class": "trace", "data-doc-id": c.d }, text));
    if (c.tc) td.appendChild(el("div", { "class": "note" }, "trace cut: first " + c.t.length + " of " + c.tc + " characters"));
    td.appendChild(el("h4", null, "Passage"));
    td.appendChild(el("div", { "class": "passage" }, (c.ti ? c.ti + "\n" : "") + (c.p || "")));
    row.appendChild(td);
    tr.parentNode.insertBefore(row, tr.nextSibling);
  }

  search.addEventListener("input", renderList);
  statusFilter.addEventListener("change", function () { renderList(); renderQuery(); });
  if (queries.length) current = 0;
  renderList();
  renderQuery();
})();
