"""The HTML report: the markdown report of `ddbench.report` as one self-contained page.

`write_html(markdown, out_dir)` converts the text `write_report` writes to README.md into
`<out_dir>/report.html`: CSS inline, every image read from `out_dir` and embedded as a base64
`data:` URI, no script and no external link, so the one file can be mailed, attached to a CI run
or opened offline. No section has code of its own here: whatever a section writes as markdown
appears in the HTML.

The markdown is parsed by `markdown-it-py` (CommonMark plus pipe tables, raw HTML off, so any
`<` in a report, e.g. an error message, is shown as text). Two render rules are ddbench's own:
an image becomes an `<img>` whose `src` is the file's bytes as a data URI, and a paragraph that
holds a single image becomes a `<figure>`. A new markdown construct in a section needs nothing
here when CommonMark or tables cover it; otherwise enable the markdown-it rule in `_parser` (or
add a render rule beside `_image`) and add a case to tests/test_report_html.py.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

HTML_FILE = "report.html"

_TITLE = re.compile(r"# +(.*)")
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
    """A whole HTML document from report markdown, titled by its first `#` heading; images are
    read from `image_dir` (paths in the markdown are relative to it)."""
    titles = (m[1] for m in map(_TITLE.fullmatch, markdown.splitlines()) if m)
    body = _parser(image_dir).render(markdown).strip()
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(next(titles, 'ddbench report'))}</title>\n<style>{_CSS}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _parser(image_dir: Path) -> MarkdownIt:
    """CommonMark with pipe tables and no raw HTML; images embedded, lone images as figures."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    # render rules are bound to the renderer: `renderer` is its `self`
    def image(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        alt = renderer.renderInlineAsText(token.children or [], options, env)
        return _image(alt, image_dir / str(token.attrGet("src")))

    def paragraph(tag: str, inline_at: int) -> Callable[..., str]:
        """A paragraph tag's rule: `tag` around a lone image (its inline token `inline_at`
        away), the usual `<p>` otherwise."""

        def render(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
            if _lone_image(tokens, idx + inline_at):
                return tag
            return renderer.renderToken(tokens, idx, options, env)

        return render

    md.add_render_rule("image", image)
    md.add_render_rule("paragraph_open", paragraph("<figure>", 1))
    md.add_render_rule("paragraph_close", paragraph("</figure>\n", -1))
    return md


def _lone_image(tokens: Sequence[Token], inline: int) -> bool:
    """Whether token `inline` is a visible paragraph's content made of one image only."""
    token = tokens[inline] if 0 <= inline < len(tokens) else None
    return (
        token is not None
        and token.type == "inline"
        and not tokens[inline - 1].hidden
        and [c.type for c in token.children or []] == ["image"]
    )


def _image(alt: str, path: Path) -> str:
    """An <img> carrying the file's bytes as a base64 data URI."""
    mime = mimetypes.guess_type(path.name)[0]
    if mime is None or not mime.startswith("image/"):
        raise ValueError(f"{path}: the HTML report embeds image files only")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:{mime};base64,{data}">'
