// rank1-batch comparison page: a disagreement query's candidates in every run, and a
// candidate's reasoning traces side by side. Plain DOM, no library, no network.
// Data: <script id="compare-data" type="application/json"> (rank1_batch.outputs.report.compare_page).
(function () {
  "use strict";
  var node = document.getElementById("compare-data");
  if (!node) return;
  var data = JSON.parse(node.textContent);
  var runs = data.runs;
  var byId = {};
  data.queries.forEach(function (q) { byId[q.id] = q; });
  var detail = document.getElementById("pair-detail");

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

  // One run's view of a candidate: its rank (the input rank for the first stage), score, trace.
  function view(run, c) {
    if (!c) return null;
    if (run.kind === "first_stage") return { r: c.ir, s: null, st: "first stage", t: null, tc: null };
    return { r: c.r, s: c.s, st: c.st, t: c.t, tc: c.tc };
  }

  function candidates(q) {
    var maps = q.src.map(function (list) {
      var m = {};
      (list || []).forEach(function (c) { m[c.d] = c; });
      return m;
    });
    var docs = {}, order = [];
    runs.forEach(function (run) {
      (q.src[run.src] || []).forEach(function (c) { if (!docs[c.d]) { docs[c.d] = true; order.push(c.d); } });
    });
    var first = function (d) { return runs.map(function (run) { return view(run, maps[run.src][d]); }); };
    var rows = order.map(function (d) {
      var any = null;
      for (var i = 0; i < maps.length; i++) if (maps[i][d]) { any = maps[i][d]; break; }
      return { d: d, rel: any ? any.rel : null, p: any ? any.p : "", ti: any ? any.ti : null, v: first(d) };
    });
    var key = function (r) { return r.v[0] && r.v[0].r !== null ? r.v[0].r : 1e9; };
    rows.sort(function (a, b) { return key(a) - key(b) || (a.d < b.d ? -1 : 1); });
    return rows;
  }

  function show(qid, tr) {
    var q = byId[qid];
    Array.prototype.forEach.call(document.querySelectorAll("tr.dq"), function (r) { r.classList.remove("active"); });
    tr.classList.add("active");
    detail.textContent = "";
    detail.appendChild(el("h3", { id: "cmp-query-title" }, q.id + ": " + q.text));
    detail.appendChild(el("p", { "class": "note" },
      "Candidates in the baseline's order; click one for every run's reasoning trace of that pair."));
    var table = el("table", { id: "cmp-candidates" });
    var head = el("tr");
    head.appendChild(el("th", null, "doc_id"));
    head.appendChild(el("th", null, "qrels"));
    runs.forEach(function (run) {
      head.appendChild(el("th", { title: run.label }, "rank · " + run.short));
      head.appendChild(el("th", { title: run.label }, "P(true) · " + run.short));
    });
    table.appendChild(head);
    candidates(q).forEach(function (row) {
      var tr2 = el("tr", { "class": "cand", "data-doc-id": row.d });
      tr2.appendChild(el("td", null, row.d));
      tr2.appendChild(el("td", { "class": "n" }, row.rel === null || row.rel === undefined ? "–" : row.rel));
      row.v.forEach(function (v) {
        tr2.appendChild(el("td", { "class": "n" }, v && v.r !== null ? v.r : "–"));
        tr2.appendChild(el("td", { "class": "n" }, v ? num(v.s, 4) : "–"));
      });
      tr2.addEventListener("click", function () { toggle(tr2, row); });
      table.appendChild(tr2);
    });
    detail.appendChild(table);
  }

  function toggle(tr, row) {
    var next = tr.nextSibling;
    if (next && next.className === "traces-row") {
      next.parentNode.removeChild(next);
      tr.classList.remove("open");
      return;
    }
    tr.classList.add("open");
    var out = el("tr", { "class": "traces-row" });
    var td = el("td", { colspan: 2 + 2 * runs.length });
    var side = el("div", { "class": "side", style: "--cols:" + runs.length });
    runs.forEach(function (run, i) {
      var v = row.v[i];
      var col = el("div", { "class": "trace-col", "data-run": i });
      col.appendChild(el("h4", null, run.short + ": " + run.label + (v ? " · " + v.st + " · P(true) " + num(v.s, 4) : "")));
      var text;
      if (run.kind === "first_stage") text = "(first stage: no reasoning)";
      else if (!v) text = "(this run has no row for this pair on the page)";
      else text = v.t === null || v.t === undefined ? "(no trace)" : (v.t.trim() || "(empty trace)");
      col.appendChild(el("div", { "class": "trace", "data-run": i, "data-doc-id": row.d }, text));
      if (v && v.tc) col.appendChild(el("div", { "class": "note" }, "trace cut: first " + v.t.length + " of " + v.tc + " characters"));
      side.appendChild(col);
    });
    td.appendChild(side);
    td.appendChild(el("h4", null, "Passage"));
    td.appendChild(el("div", { "class": "passage" }, (row.ti ? row.ti + "\n" : "") + (row.p || "")));
    out.appendChild(td);
    tr.parentNode.insertBefore(out, tr.nextSibling);
  }

  Array.prototype.forEach.call(document.querySelectorAll("tr.dq"), function (tr) {
    tr.addEventListener("click", function () { show(tr.getAttribute("data-query-id"), tr); });
  });
})();
