"""Shared rendering for the report family (compress and audit): the run description as
tables (a dict value such as ``splits`` or ``params`` becomes its own small table), Markdown
and HTML tables, inline figures and the page frame.
"""

import base64
import html

__all__ = ["esc", "md_table", "html_table", "meta_markdown", "meta_html", "figures_html", "page"]

esc = html.escape


def _text(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return "-" if value is None else str(value)


def md_table(header, rows):
    """A Markdown table (``|`` in cells escaped)."""
    def cell(v):
        return _text(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header, rows, table_id=None, row_classes=None):
    """An HTML table; ``row_classes`` gives each row a CSS class (or None)."""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(_text(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes else None
        attr = f' class="{esc(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{esc(_text(v))}</td>" for v in row) + "</tr>")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _split_meta(meta):
    plain = [(k, v) for k, v in meta.items() if not isinstance(v, dict)]
    nested = [(k, v) for k, v in meta.items() if isinstance(v, dict)]
    return plain, nested


def meta_markdown(meta):
    """The run description: a bullet per plain value, a two-column table per dict value."""
    plain, nested = _split_meta(meta)
    lines = [f"- **{k}**: {_text(v)}" for k, v in plain]
    for key, value in nested:
        lines += ["", f"**{key}**", "", md_table(["key", "value"], list(value.items()))]
    return "\n".join(lines)


def meta_html(meta):
    plain, nested = _split_meta(meta)
    out = "<ul>" + "".join(f"<li><b>{esc(str(k))}</b>: {esc(_text(v))}</li>" for k, v in plain) + "</ul>"
    for key, value in nested:
        out += (f"<div class=\"meta-table\"><h3>{esc(str(key))}</h3>"
                + html_table(["key", "value"], list(value.items()), table_id=f"meta-{key}") + "</div>")
    return out


def figures_html(figures):
    """``[(title, png_bytes)]`` as inline ``<figure>`` elements."""
    return "".join(
        f"<figure><img alt=\"{esc(title)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"
        f"<figcaption>{esc(title)}</figcaption></figure>"
        for title, png in figures
    )


def page(title, body, footer):
    """A self-contained HTML page."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1400px; }}
table {{ border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: right; }}
th {{ background: #f0f0f0; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
tr.unsafe-baseline {{ background: #fff4f0; }} tr.compressed {{ background: #f0fff4; }}
tr.worse, td.worse, .verdict.high {{ background: #ffe0e0; }} .verdict {{ padding: 0.6rem 1rem; border-radius: 4px;
  background: #eef6ff; max-width: 60rem; }} .verdict.moderate {{ background: #fff6dd; }}
.meta-table {{ display: inline-block; vertical-align: top; margin-right: 2rem; }}
dl.glossary dt {{ font-weight: bold; }} dl.glossary dd {{ margin: 0 0 0.4rem 1.5rem; }}
figure {{ display: inline-block; margin: 1rem; vertical-align: top; }} img {{ max-width: 640px; }}
</style></head>
<body><h1>{esc(title)}</h1>
{body}
<footer><small>{esc(footer)}</small></footer></body></html>
"""
