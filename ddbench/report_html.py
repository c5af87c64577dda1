"""The HTML report: the markdown report of `ddbench.report` as one self-contained page.

`write_html(markdown, out_dir)` converts the text `write_report` writes to README.md into
`<out_dir>/report.html`: CSS inline, every image read from `out_dir` and embedded as a base64
`data:` URI, no script and no external link, so the one file can be mailed, attached to a CI run
or opened offline. No section has code of its own here: whatever report.py writes as markdown
appears in the HTML.

The converter knows exactly the markdown subset report.py writes. Block level, line by line:
`#` to `###` headings, pipe tables (a header row, a `|---|` rule, body rows), an image alone on
its line (`![alt](path relative to out_dir)`), `- ` list items, and paragraphs (runs of other
lines); inline: `**bold**`, `*italic*` and `` `code` ``. All text is escaped with `html.escape`.
To support a new construct in report.py, give it a kind in `_kind` (block) or an alternative in
`_INLINE` (inline), render it in `_blocks` / `_inline`, and add a case to
tests/test_report_html.py.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from collections.abc import Iterator
from html import escape
from itertools import groupby
from pathlib import Path

HTML_FILE = "report.html"

_HEADING = re.compile(r"(#{1,6}) +(.*)")
_IMAGE = re.compile(r"!\[(.*?)\]\((.+)\)")
_RULE = re.compile(r"\|(?: *:?-+:? *\|)+")
_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*(\S(?:.*?\S)?)\*")  # code | bold | italic
_CSS = """
body { font-family: system-ui, sans-serif; color: #222; line-height: 1.45;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em;
        font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; text-align: left; }
td { text-align: right; white-space: nowrap; }
td:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 0.6em 0; }
img { max-width: 100%; height: auto; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""


def write_html(markdown: str, out_dir: Path) -> Path:
    """Write `<out_dir>/report.html` from the report's markdown; images are read from `out_dir`."""
    path = out_dir / HTML_FILE
    path.write_text(markdown_to_html(markdown, out_dir), encoding="utf-8")
    return path


def markdown_to_html(markdown: str, image_dir: Path) -> str:
    """A whole HTML document from report markdown, titled by its first `#` heading."""
    lines = markdown.splitlines()
    titles = (m[2] for m in map(_HEADING.fullmatch, lines) if m and len(m[1]) == 1)
    body = "\n".join(_blocks(lines, image_dir))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(next(titles, 'ddbench report'))}</title>\n<style>{_CSS}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _kind(line: str) -> str:
    """The block a markdown line belongs to."""
    line = line.strip()
    if not line:
        return "blank"
    if _HEADING.fullmatch(line):
        return "heading"
    if _IMAGE.fullmatch(line):
        return "image"
    if line.startswith("|") and line.endswith("|"):
        return "table"
    if line.startswith("- "):
        return "list"
    return "text"


def _blocks(lines: list[str], image_dir: Path) -> Iterator[str]:
    """HTML for each run of same-kind lines (headings and images: one element per line)."""
    for kind, run in groupby((line.strip() for line in lines), key=_kind):
        group = list(run)
        if kind == "heading":
            for line in group:
                marks, text = _HEADING.fullmatch(line).groups()
                yield f"<h{len(marks)}>{_inline(text)}</h{len(marks)}>"
        elif kind == "image":
            for line in group:
                alt, src = _IMAGE.fullmatch(line).groups()
                yield f"<figure>{_image(alt, image_dir / src)}</figure>"
        elif kind == "table":
            yield _table(group)
        elif kind == "list":
            items = [f"<li>{_inline(line[2:])}</li>" for line in group]
            yield "\n".join(["<ul>", *items, "</ul>"])
        elif kind == "text":
            text = "\n".join(group)
            yield f"<p>{_inline(text)}</p>"
        # "blank": a blank line only ends the block before it


def _table(rows: list[str]) -> str:
    """A pipe table; its first row is the header when the second is a `|---|` rule."""
    cells = [[c.strip() for c in row[1:-1].split("|")] for row in rows]
    html = ["<table>"]
    if len(rows) > 1 and _RULE.fullmatch(rows[1]):
        head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
        html.append(f"<thead><tr>{head}</tr></thead>")
        cells = cells[2:]
    html += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells]
    return "\n".join(html + ["</table>"])


def _image(alt: str, path: Path) -> str:
    """An <img> carrying the file's bytes as a base64 data URI."""
    mime = mimetypes.guess_type(path.name)[0]
    if mime is None or not mime.startswith("image/"):
        raise ValueError(f"{path}: the HTML report embeds image files only")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:{mime};base64,{data}">'


def _inline(text: str) -> str:
    """Escaped text with `code`, **bold** and *italic* spans as tags."""
    out, end = [], 0
    for match in _INLINE.finditer(text):
        code, bold, italic = match.groups()
        out.append(escape(text[end : match.start()]))
        if code is not None:
            out.append(f"<code>{escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{_inline(bold)}</strong>")
        else:
            out.append(f"<em>{_inline(italic)}</em>")
        end = match.end()
    return "".join(out) + escape(text[end:])
