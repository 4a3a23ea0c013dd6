"""The report page: one self-contained HTML file, inline CSS and JS, no network.

Constraints:
- Works offline, from a file:// URL: no external resource; a Content-Security-Policy forbids any
  fetch, so a mistake here cannot make the page phone home.
- Strings from traces (routes, class names, values) are untrusted: Python escapes them into HTML,
  the embedded JSON cannot close its ``<script>`` element, and the script writes them with
  ``textContent`` only.
- Large trees stay usable: the tree is built lazily (a node's children are created when it is
  opened), opened only along the path to the first divergence, and a filter box lists matching
  nodes (at most ``FILTER_LIMIT``) instead of expanding everything; a very wide node opens
  ``CHILD_PAGE`` children at a time.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, Final

__all__ = ["CHILD_PAGE", "FILTER_LIMIT", "render_page"]

FILTER_LIMIT: Final = 500
"""The filter lists at most this many matching nodes."""

CHILD_PAGE: Final = 200
"""An opened node shows this many children at a time (more behind a button)."""

_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
    "connect-src 'none'; form-action 'none'; base-uri 'none'"
)

_CSS: Final = """
:root { --pass:#059669; --fail:#dc2626; --inherited:#d97706; --contains:#9d174d; --unmatched:#6b7280; --bg:#f9fafb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #111827; background: var(--bg); }
header { padding: 14px 24px; background: #111827; color: #f9fafb; }
header h1 { margin: 0; font-size: 18px; }
header .sub { color: #d1d5db; font-size: 13px; }
main { display: grid; grid-template-columns: minmax(360px, 44%) 1fr; gap: 16px; padding: 16px 24px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 12px 16px; margin-bottom: 16px; }
section h2 { font-size: 15px; margin: 0 0 8px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
.badge.introduced { background: var(--fail); } .badge.inherited { background: var(--inherited); }
.badge.contains { background: var(--contains); }
.badge.unmatched, .badge.skipped { background: var(--unmatched); }
table.kv { border-collapse: collapse; font-size: 13px; }
table.kv td { padding: 2px 10px 2px 0; vertical-align: top; }
table.kv td:first-child { color: #6b7280; white-space: nowrap; }
code, .route { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
#culprit-box { border-left: 4px solid var(--fail); } #culprit-box.pass { border-left-color: var(--pass); }
#controls { display: flex; gap: 8px; margin-bottom: 8px; flex-wrap: wrap; }
#filter { flex: 1; min-width: 160px; padding: 4px 8px; border: 1px solid #d1d5db; border-radius: 6px; }
button { border: 1px solid #d1d5db; background: #fff; border-radius: 6px; padding: 3px 10px; cursor: pointer; }
#tree { max-height: 78vh; overflow: auto; position: relative; }
#tree ul { list-style: none; margin: 0; padding-left: 16px; }
#tree > ul { padding-left: 0; }
#tree li > .row { display: flex; gap: 6px; align-items: baseline; padding: 1px 4px; border-radius: 4px; white-space: nowrap; }
#tree li > .row:hover { background: #f3f4f6; }
.toggle { width: 14px; display: inline-block; color: #6b7280; cursor: pointer; user-select: none; }
.dot { width: 9px; height: 9px; border-radius: 50%; display: inline-block; flex: none; }
.dot.pass { background: var(--pass); } .dot.fail, .dot.introduced { background: var(--fail); }
.dot.inherited { background: var(--inherited); } .dot.contains { background: var(--contains); } .dot.unmatched, .dot.skipped, .dot.none { background: #d1d5db; }
.cls { color: #6b7280; } .metric { color: #374151; font-size: 12px; }
li.culprit > .row { background: #fde68a; outline: 2px solid var(--fail); }
.note { color: #6b7280; font-size: 12.5px; }
svg.plot { width: 100%; height: auto; display: block; }
.panels { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } .panels { grid-template-columns: 1fr; } }
"""

_JS: Final = r"""
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const nodes = data.nodes;  // [route, route_b, class_name, label, parent, metric, [[stage, label]...]]
  const children = nodes.map(() => []);
  const roots = [];
  nodes.forEach((n, i) => { if (n[4] === null) roots.push(i); else children[n[4]].push(i); });
  const culprit = data.culprit;
  const onPath = new Set();
  for (let i = culprit; i !== null && i !== undefined; i = nodes[i][4]) onPath.add(i);
  const tree = document.getElementById("tree");

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function row(i, withToggle) {
    const n = nodes[i];
    const r = el("div", "row");
    const t = el("span", "toggle", withToggle && children[i].length ? "\u25b8" : "");
    r.appendChild(t);
    r.appendChild(el("span", "dot " + (n[3] || "none")));
    const name = el("span", "route", n[0] === "" ? "(root)" : n[0]);
    r.appendChild(name);
    if (n[1] !== null && n[1] !== n[0]) r.appendChild(el("span", "route cls", "\u2194 " + (n[1] || "(root)")));
    r.appendChild(el("span", "cls", n[2]));
    n[6].forEach((b) => { if (b[1]) r.appendChild(el("span", "badge " + b[1], (b[0] ? b[0] + " " : "") + b[1])); });
    if (n[5]) r.appendChild(el("span", "metric", n[5]));
    r.title = n[0];
    return r;
  }
  function item(i) {
    const li = el("li");
    li.dataset.node = String(i);
    if (i === culprit) { li.className = "culprit"; li.id = "culprit-node"; }
    const r = row(i, true);
    li.appendChild(r);
    if (children[i].length) {
      r.querySelector(".toggle").addEventListener("click", () => toggle(li, i));
      r.addEventListener("dblclick", () => toggle(li, i));
      if (onPath.has(i) && i !== culprit) toggle(li, i);
    }
    return li;
  }
  function toggle(li, i) {
    const open = li.querySelector(":scope > ul");
    const t = li.querySelector(":scope > .row > .toggle");
    if (open) { open.remove(); t.textContent = "\u25b8"; return; }
    const ul = el("ul");
    const kids = children[i];
    const needed = kids.findIndex((c) => onPath.has(c)) + 1;
    showMore(ul, kids, 0, Math.max(data.child_page, needed));
    li.appendChild(ul);
    t.textContent = "\u25be";
  }
  function showMore(ul, kids, from, count) {
    // Very wide nodes (thousands of graph ops under one module) open a page at a time.
    const to = Math.min(kids.length, from + count);
    for (let k = from; k < to; k++) ul.appendChild(item(kids[k]));
    if (to < kids.length) {
      const more = el("li", "more");
      const button = el("button", "", "show " + Math.min(data.child_page, kids.length - to) + " more of " + (kids.length - to));
      button.type = "button";
      button.addEventListener("click", () => { more.remove(); showMore(ul, kids, to, data.child_page); });
      more.appendChild(button);
      ul.appendChild(more);
    }
  }
  function showTree() {
    tree.replaceChildren();
    const ul = el("ul");
    showMore(ul, roots, 0, data.child_page);
    tree.appendChild(ul);
  }
  function showMatches(text, failingOnly) {
    tree.replaceChildren();
    const ul = el("ul");
    let shown = 0, total = 0;
    const needle = text.toLowerCase();
    nodes.forEach((n, i) => {
      if (failingOnly && !["fail", "introduced", "inherited", "contains"].includes(n[3])) return;
      if (needle && !(n[0].toLowerCase().includes(needle) || n[2].toLowerCase().includes(needle))) return;
      total += 1;
      if (shown >= data.filter_limit) return;
      shown += 1;
      const li = el("li");
      if (i === culprit) { li.className = "culprit"; li.id = "culprit-node"; }
      li.appendChild(row(i, false));
      ul.appendChild(li);
    });
    tree.appendChild(ul);
    const note = total > shown ? shown + " of " + total + " matches shown; refine the filter" : total + " matches";
    tree.appendChild(el("p", "note", note));
  }
  const filter = document.getElementById("filter");
  const failing = document.getElementById("failing-only");
  let timer = null;
  function refresh() {
    if (filter.value.trim() || failing.checked) showMatches(filter.value.trim(), failing.checked);
    else showTree();
  }
  filter.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 120); });
  failing.addEventListener("change", refresh);
  document.getElementById("collapse").addEventListener("click", () => { filter.value = ""; failing.checked = false; onPath.clear(); showTree(); });
  document.getElementById("to-culprit").addEventListener("click", () => {
    if (!document.getElementById("culprit-node")) { filter.value = ""; failing.checked = false; showTree(); }
    scrollToCulprit();
  });
  function scrollToCulprit() {
    const c = document.getElementById("culprit-node");
    if (c) tree.scrollTop = c.offsetTop - tree.offsetTop - tree.clientHeight / 2;
  }
  // A link can carry a filter: report.html#filter=attention
  if (location.hash.startsWith("#filter=")) filter.value = decodeURIComponent(location.hash.slice(8));
  refresh();
  scrollToCulprit();
  // The time plot's first divergent step links to its tree (report.html#step=250 does the same)
  function showStep() {
    const m = /^#step=(\d+)$/.exec(location.hash);
    if (!m) return;
    if (!document.getElementById("culprit-node")) { filter.value = ""; failing.checked = false; showTree(); }
    document.getElementById("tree-section").scrollIntoView();
    scrollToCulprit();
    document.body.dataset.step = m[1];
  }
  document.querySelectorAll("[data-step]").forEach((mark) => mark.addEventListener("click", () => {
    location.hash = "step=" + mark.dataset.step;
  }));
  window.addEventListener("hashchange", showStep);
  showStep();
  document.body.dataset.rendered = "true";
})();
"""


def _json_for_script(value: Any) -> str:
    """JSON that cannot end its ``<script>`` element or open a comment inside it."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def render_page(
    *,
    title: str,
    status: str,
    subtitle: str,
    summary: list[tuple[str, str]],
    culprit_html: str,
    growth_svg: str,
    timeline_html: str,
    elementwise_html: str,
    unmatched_html: str,
    tree_nodes: list[list[Any]],
    culprit: int | None,
    tree_step: int | None = None,
) -> str:
    """The whole page. The ``*_html``/``*_svg`` arguments are already-escaped fragments;
    ``tree_step``: the step whose units the tree shows (None: every step of the verdict)."""
    data = {"nodes": tree_nodes, "culprit": culprit, "filter_limit": FILTER_LIMIT, "child_page": CHILD_PAGE}
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{escape(title)} <span class="badge {escape(status)}">{escape(status)}</span></h1>
<div class="sub">{escape(subtitle)}</div></header>
<main>
<div>
<section id="tree-section"><h2>Module tree{"" if tree_step is None else f" at step {int(tree_step)}"}</h2>
<div id="controls"><input id="filter" type="search" placeholder="filter routes or classes" aria-label="filter">
<label class="note"><input id="failing-only" type="checkbox"> failing only</label>
<button id="to-culprit" type="button">culprit</button><button id="collapse" type="button">collapse</button></div>
<div id="tree"><p class="note">The tree needs JavaScript.</p></div>
</section>
</div>
<div>
<section><h2>Summary</h2>{_kv_table(summary)}</section>
{culprit_html}
{timeline_html}
<section><h2>Error along the network</h2>{growth_svg}</section>
{elementwise_html}
{unmatched_html}
</div>
</main>
<script type="application/json" id="report-data">{_json_for_script(data)}</script>
<script>{_JS}</script>
</body>
</html>
"""
