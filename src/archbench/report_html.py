"""The self-contained report.html: the report's blocks as HTML plus a per-example browser.

Plots are embedded as base64 PNG; the browser's data is JSON inside a <script type="application/json">
element (with <, > and & escaped so no text can close it) and a little inline JavaScript that builds the
list with textContent only, so no stored prompt or prediction is ever parsed as markup. Nothing is loaded
from the network.
"""
from __future__ import annotations

import base64
import html
import json
import re

_NUMBER = re.compile(r"^[-+]?[\d.]+( ± [\d.]+)?[MB]?$|^-$")  # right-aligned cells; text cells align left


def _html_block(b: tuple) -> str:
    e = html.escape
    if b[0] in ("h1", "h2", "h3", "p"):
        return f"<{b[0]}>{e(b[1])}</{b[0]}>" if b[1] else ""
    if b[0] == "table":
        head = "".join(f"<th>{e(h)}</th>" for h in b[1])
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" if _NUMBER.match(str(c)) else
                                        f'<td class="text">{e(str(c))}</td>' for c in r) + "</tr>" for r in b[2])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if b[0] == "code":
        return f"<pre>{e(b[1])}</pre>"
    data = base64.b64encode(b[3]).decode()
    return (f'<figure><img class="plot" alt="{e(b[2])}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(b[2])}</figcaption></figure>")


def _json_for_script(value) -> str:
    """JSON that cannot end its <script> element early or open a comment: <, > and & become escapes."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_html(blocks: list[tuple], res: dict) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    data = {"prompts": list(res["prompts"]), "rows": res["examples"]}
    return _PAGE.format(title=html.escape(res["title"] or "archbench report"), body=body, style=_STYLE, script=_SCRIPT,
                        data=_json_for_script(data))


_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th:first-child,td:first-child,td.text{text-align:left}thead{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;
overflow:auto;max-height:24em;font-size:12px}figure{margin:1em 0}img.plot{max-width:100%}
.ex{border:1px solid #ddd;border-radius:4px;padding:.4em .7em;margin:.4em 0}.ex.ok{border-left:5px solid #2a2}
.ex.bad{border-left:5px solid #c33}.ex pre{max-height:14em;white-space:pre-wrap}.meta{color:#666;font-size:12px}
#browser label{margin-right:1em}"""

_SCRIPT = """(function () {
  var data = JSON.parse(document.getElementById("example-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function options(select, values, name) {
    values.forEach(function (v) {
      var o = el("option", "", name(v)); o.value = String(v); select.appendChild(o);
    });
  }
  var models = [], shots = [];
  data.rows.forEach(function (r) {
    if (models.indexOf(r.m) < 0) { models.push(r.m); }
    if (shots.indexOf(r.k) < 0) { shots.push(r.k); }
  });
  shots.sort(function (a, b) { return a - b; });
  options($("f-model"), [""].concat(models), function (v) { return v || "all models"; });
  options($("f-shots"), [""].concat(shots), function (v) { return v === "" ? "all shots" : v + "-shot"; });
  var LIMIT = 200;
  function show() {
    var m = $("f-model").value, k = $("f-shots").value, ok = $("f-ok").value;
    var rows = data.rows.filter(function (r) {
      return (!m || r.m === m) && (k === "" || String(r.k) === k) && (ok === "" || String(r.ok) === ok);
    });
    var box = $("examples");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    rows.slice(0, LIMIT).forEach(function (r) {
      var ex = el("div", "ex " + (r.ok ? "ok" : "bad"));
      ex.appendChild(el("div", "meta", r.m + " \\u00b7 " + r.k + "-shot trial " + r.t + " \\u00b7 " + r.g +
        " \\u00b7 " + r.id + " \\u00b7 EM " + r.em + " \\u00b7 F1 " + r.f1.toFixed(2)));
      var details = el("details"); details.appendChild(el("summary", "", "prompt"));
      details.appendChild(el("pre", "", data.prompts[r.p])); ex.appendChild(details);
      ex.appendChild(el("div", "", "prediction: " + (r.y || "(empty)")));
      ex.appendChild(el("div", "", "gold: " + r.a.join(" | ")));
      box.appendChild(ex);
    });
    $("browser-count").textContent = rows.length + " of " + data.rows.length + " examples" +
      (rows.length > LIMIT ? " (first " + LIMIT + " shown)" : "");
  }
  ["f-model", "f-shots", "f-ok"].forEach(function (id) { $(id).addEventListener("change", show); });
  show();
})();"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
{body}
<h2>Per-example browser</h2>
<div id="browser"><label>model <select id="f-model"></select></label><label>shots <select id="f-shots"></select>
</label><label>answer <select id="f-ok"><option value="">all</option><option value="1">correct (EM 1)</option>
<option value="0">incorrect</option></select></label><span id="browser-count"></span></div>
<div id="examples"></div>
<script type="application/json" id="example-data">{data}</script>
<script>{script}</script>
</body></html>
"""
