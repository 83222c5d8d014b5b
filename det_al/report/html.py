"""The report's ``index.html``: one self-contained page, no network, no framework.

User data (file names, category names, run.json values) reaches the page in two ways only:
server-side text passed through :func:`html.escape`, and a ``<script type="application/json">``
block (``<``, ``>``, ``&`` written as ``\\u003c`` ...) that the page's script reads with
``JSON.parse`` and inserts with ``textContent``. A Content-Security-Policy forbids every request
except the page's own files and allows only the page's own script (by its hash).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json

from matplotlib import colormaps

from det_al.report.draw import PASS_COLOURS, UNCERTAINTY_CMAP

SCRIPT = r"""
"use strict";
const data = JSON.parse(document.getElementById("report-data").textContent);
const gallery = document.getElementById("gallery");
const sortSel = document.getElementById("sort"), classSel = document.getElementById("class");
const certSel = document.getElementById("certain"), passBox = document.getElementById("passes");
const fmt = (v) => (v === null || v === undefined) ? "–" : Number(v).toFixed(3);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function colour(u) {
  const p = data.palette, t = Math.min(Math.max((u || 0) / data.vmax, 0), 1);
  return p[Math.round(t * (p.length - 1))];
}
function card(c) {
  const root = el("article", "card" + (c.error ? " unreadable" : ""));
  root.dataset.rank = String(c.rank);
  const fig = el("div", "thumb");
  const img = el("img", "main"); img.src = c.thumb; img.alt = "image " + c.rank;
  fig.append(img);
  if (c.passes_thumb) {
    const pimg = el("img", "passes"); pimg.src = c.passes_thumb; pimg.alt = "passes of image " + c.rank;
    fig.append(pimg);
  }
  root.append(fig);
  const head = el("div", "head");
  head.append(el("span", "rank", "#" + c.rank), el("span", "score", fmt(c.informativeness)),
              el("span", "badge " + (c.certain ? "certain" : "uncertain"), c.certain ? "certain" : "uncertain"));
  if (c.empty) head.append(el("span", "badge empty", "empty"));
  root.append(head);
  root.append(el("div", "file", c.file_name));
  if (c.error) root.append(el("div", "error", "unreadable: " + c.error));
  const comps = el("div", "components");
  for (const [name, value] of c.components) {
    const bar = el("span", "bar"); const fill = el("span", "fill");
    fill.style.width = (100 * Math.min(Math.max(value, 0), 1)) + "%"; bar.append(fill);
    comps.append(el("span", "cname", name), bar, el("span", "cval", fmt(value)));
  }
  root.append(comps);
  const objs = el("ol", "objects");
  for (const o of c.objects) {
    const li = el("li"); const sw = el("span", "swatch"); sw.style.background = colour(o.uncertainty);
    li.append(sw, el("span", "cat", o.category), el("span", "num", "p " + fmt(o.score) + " · u " + fmt(o.uncertainty)));
    objs.append(li);
  }
  root.append(objs);
  const more = c.n_boxes - c.objects.length;
  const count = (n, one, many) => n + " " + (n === 1 ? one : many);
  const foot = el("div", "foot", count(c.n_boxes, "box", "boxes") + " · " + count(c.n_objects, "object", "objects") +
                  (more > 0 ? " (" + more + " not listed)" : ""));
  if (c.passes_thumb) {
    const label = el("label", "toggle"); const box = el("input"); box.type = "checkbox";
    box.addEventListener("change", () => root.classList.toggle("show-passes", box.checked));
    label.append(box, document.createTextNode(" " + c.n_passes + " passes")); foot.append(label);
  }
  root.append(foot);
  return root;
}
const cards = data.cards.map((c) => ({c, node: card(c)}));
const classes = [...new Set(data.cards.flatMap((c) => c.classes))].sort();
for (const name of classes) { const o = el("option", null, name); o.value = name; classSel.append(o); }
for (const name of data.components) { const o = el("option", null, "component: " + name + " (high first)"); o.value = "c:" + name; sortSel.append(o); }
const maxU = (c) => Math.max(-1, ...c.objects.map((o) => o.uncertainty || 0));
function keyOf(mode, c) {
  if (mode === "class") return [c.classes.length ? 0 : 1, c.classes[0] || "", c.rank];
  if (mode === "low") return [c.informativeness, c.rank];
  if (mode === "objects") return [-c.n_objects, c.rank];
  if (mode === "uncertainty") return [-maxU(c), c.rank];
  if (mode.startsWith("c:")) { const f = c.components.find((p) => p[0] === mode.slice(2)); return [f ? -f[1] : 1, c.rank]; }
  return [c.rank];
}
function cmp(a, b) {
  for (let i = 0; i < a.length; i++) { if (a[i] < b[i]) return -1; if (a[i] > b[i]) return 1; }
  return 0;
}
function update() {
  const mode = sortSel.value, cls = classSel.value, cert = certSel.value;
  const sorted = cards.slice().sort((x, y) => cmp(keyOf(mode, x.c), keyOf(mode, y.c)));
  let shown = 0;
  for (const {c, node} of sorted) {
    const ok = (!cls || c.classes.includes(cls)) && (cert === "all" || (cert === "certain") === c.certain);
    node.hidden = !ok; shown += ok; gallery.append(node);
  }
  document.getElementById("count").textContent = "showing " + shown + " of " + cards.length;
}
sortSel.addEventListener("change", update); classSel.addEventListener("change", update);
certSel.addEventListener("change", update);
passBox.addEventListener("change", () => document.body.classList.toggle("show-passes", passBox.checked));
update();
"""

STYLE = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --accent:#d9480f; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 14px 24px 8px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 18px 0 8px; }
.stats { color: var(--muted); } .stats b { color: var(--fg); }
main { padding: 0 24px 24px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
.plot { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.plot h3 { font-size: 13px; margin: 0 0 4px; color: var(--muted); font-weight: 600; }
.plot svg { max-width: 100%; height: auto; display: block; }
.controls { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 14px;
            align-items: center; padding: 10px 0; background: var(--bg); border-bottom: 1px solid var(--line); }
.controls select { font: inherit; padding: 2px 4px; max-width: 260px; }
#count { color: var(--muted); margin-left: auto; }
.legend { display: flex; align-items: center; gap: 6px; font-size: 12px; color: var(--muted); }
.gradient { width: 140px; height: 10px; border-radius: 3px; border: 1px solid var(--line); }
.passdots span { display: inline-block; width: 10px; height: 10px; margin-right: 2px; border-radius: 2px; }
#gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 14px; margin-top: 14px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
.card.unreadable { border-color: #cf222e; }
.thumb { background: #222; display: flex; justify-content: center; }
.thumb img { max-width: 100%; height: 220px; object-fit: contain; display: block; }
.thumb img.passes, .show-passes .thumb img.main { display: none; }
.show-passes .thumb img.passes { display: block; }
.head { display: flex; gap: 8px; align-items: baseline; padding: 6px 10px 0; }
.rank { font-weight: 700; } .score { font-variant-numeric: tabular-nums; color: var(--accent); font-weight: 600; }
.badge { font-size: 11px; padding: 0 6px; border-radius: 9px; border: 1px solid var(--line); }
.badge.certain { background: #dafbe1; border-color: #4ac26b; }
.badge.uncertain { background: #fff1e5; border-color: #fb8f44; }
.badge.empty { background: #eaeef2; }
.file { padding: 0 10px; font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted);
        word-break: break-all; }
.error { padding: 0 10px; color: #cf222e; font-size: 12px; }
.components { display: grid; grid-template-columns: auto 1fr auto; gap: 2px 8px; align-items: center;
              padding: 6px 10px; font-size: 12px; }
.cname { color: var(--muted); } .cval { font-variant-numeric: tabular-nums; }
.bar { height: 6px; background: #eaeef2; border-radius: 3px; overflow: hidden; }
.fill { display: block; height: 100%; background: var(--accent); }
.objects { margin: 0; padding: 0 10px 0 30px; font-size: 12px; }
.objects li { margin: 1px 0; } .swatch { display: inline-block; width: 9px; height: 9px; margin-right: 5px; border-radius: 2px; }
.cat { font-weight: 600; margin-right: 6px; word-break: break-all; } .num { color: var(--muted); font-variant-numeric: tabular-nums; }
.foot { display: flex; justify-content: space-between; padding: 6px 10px 8px; font-size: 12px; color: var(--muted); }
table { border-collapse: collapse; background: #fff; font-size: 12px; }
td, th { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
details { margin-top: 8px; } summary { cursor: pointer; }
footer { color: var(--muted); font-size: 12px; padding: 12px 24px; }
"""


def _script_json(obj: object) -> str:
    """JSON safe inside a ``<script type="application/json">`` element (no ``</script>``)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _hex(rgb: tuple[float, ...]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


def uncertainty_palette(n: int = 21) -> list[str]:
    """``n`` hex colours of the boxes' colormap from uncertainty 0 to ``vmax`` (see report_draw)."""
    cmap = colormaps[UNCERTAINTY_CMAP]
    return [_hex(cmap(0.1 + 0.9 * i / (n - 1))) for i in range(n)]


def _plot(title: str, svg: str | None) -> str:
    return f'<div class="plot"><h3>{html.escape(title)}</h3>{svg}</div>' if svg else ""


def render_index(title: str, cards: list[dict], stats: dict, plots: dict, vmax: float,
                 skipped: list[dict], run: list[tuple[str, str]], loop_given: bool) -> str:
    """The whole page. ``cards`` are the gallery entries built by :mod:`det_al.report.write`."""
    esc = html.escape
    components = []
    for c in cards:
        components += [name for name, _ in c["components"] if name not in components]
    palette = uncertainty_palette()
    data = {"cards": cards, "vmax": vmax, "palette": palette, "components": components}
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode()
    csp = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'")
    s = stats
    stats_line = (f"<b>{s['n_images']:,}</b> images ranked · top <b>{s['n_top']}</b> shown · "
                  f"<b>{s['n_certain']:,}</b> certain · <b>{s['n_empty']:,}</b> empty · "
                  f"<b>{s['n_skipped']:,}</b> skipped · <b>{s['n_boxes']:,}</b> predicted boxes")
    curves = plots.get("curves")
    if loop_given and not curves:
        curves_html = "<p>The loop CSV has no numeric metric column to plot.</p>"
    else:
        curves_html = _plot("learning curves (mean over seeds, band = min–max)", curves)
    skipped_rows = "".join(
        f"<tr><td>{esc(str(x.get('image_id', '')))}</td><td>{esc(str(x.get('file_name', '')))}</td>"
        f"<td>{esc(str(x.get('reason', '')))}</td></tr>" for x in skipped[:200])
    skipped_html = (f"<details><summary>{len(skipped)} image{'s' if len(skipped) != 1 else ''} could not "
                    f"be scored</summary><table>"
                    f"<tr><th>image id</th><th>file</th><th>reason</th></tr>{skipped_rows}</table>"
                    + (f"<p>… and {len(skipped) - 200} more in skipped.json</p>" if len(skipped) > 200 else "")
                    + "</details>") if skipped else ""
    run_html = ("<details><summary>run</summary><table>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in run) + "</table></details>") if run else ""
    gradient = ", ".join(palette)
    pass_dots = "".join(f'<span style="background:{_hex(tuple(c / 255 for c in rgb))}"></span>'
                        for rgb in PASS_COLOURS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp, quote=False)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}</style></head>
<body>
<header><h1>{esc(title)}</h1><div class="stats">{stats_line}</div></header>
<main>
<h2>Selection vs pool</h2>
<div class="plots">
{_plot("informativeness (dashed: lowest in the top N)", plots.get("informativeness"))}
{_plot("predicted classes", plots.get("classes"))}
{curves_html}
</div>
{skipped_html}{run_html}
<h2>Top {len(cards)} images</h2>
<div class="controls">
<label>sort <select id="sort"><option value="rank">rank (most informative first)</option>
<option value="low">least informative first</option><option value="class">class (main class, then rank)</option>
<option value="uncertainty">most uncertain box first</option><option value="objects">most objects first</option></select></label>
<label>class <select id="class"><option value="">all classes</option></select></label>
<label>show <select id="certain"><option value="all">certain and uncertain</option>
<option value="uncertain">uncertain only</option><option value="certain">certain only</option></select></label>
<label><input type="checkbox" id="passes"> stochastic passes</label>
<span class="legend">box uncertainty 0 <span class="gradient" style="background:linear-gradient(90deg, {gradient})"></span> {vmax:.3g}</span>
<span class="legend passdots">passes {pass_dots}</span>
<span id="count"></span>
</div>
<noscript><p>Sorting and the gallery need JavaScript.</p></noscript>
<div id="gallery"></div>
</main>
<footer>Written by det_al. Boxes are numbered as in each card's list (most uncertain first); the passes view shows each
stochastic pass in its own colour with the pseudo-labels in white.</footer>
<script type="application/json" id="report-data">{_script_json(data)}</script>
<script>{SCRIPT}</script>
</body></html>
"""
