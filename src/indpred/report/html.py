"""One self-contained HTML report: tables, figures, text and key-values in a single file.

Every image is embedded as a base64 ``data:`` URI, the CSS is inline, there is no
JavaScript, and a Content-Security-Policy forbids loading anything from elsewhere,
so the file can be mailed, archived or opened offline and looks the same. All
text is HTML-escaped.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]

MIME_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}


# --------------------------------------------------------------------------- section types

@dataclass
class Table:
    """A table: ``rows`` is a list of rows, each as long as ``columns``; numbers are right-aligned."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str | None = None


@dataclass
class Figure:
    """An image file (PNG, GIF, JPEG or SVG) embedded in the page, with an optional caption."""

    title: str
    path: PathLike
    caption: str | None = None


@dataclass
class Text:
    """Plain text with a little markdown: blank-line paragraphs, "- " bullets, `code`, **bold**."""

    title: str
    text: str


@dataclass
class KeyValues:
    """A two-column table of names and values (nested values shown as compact JSON)."""

    title: str
    values: Mapping[str, Any]


Section = Table | Figure | Text | KeyValues


# --------------------------------------------------------------------------- rendering

def format_value(value: Any) -> str:
    """A cell's text: floats to 4 significant figures (one decimal from 1000 up), the rest as str/JSON."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(value, int):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # NumPy / torch scalars
        return format_value(value.item())
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return hasattr(value, "item") and getattr(value, "ndim", None) == 0


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
]


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** into tags (safe: the markers survive escaping)."""
    out = html.escape(text)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _render_text(text: str) -> str:
    """Blank-line separated blocks; a block whose lines all start with "- " is a bullet list."""
    parts = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        if all(ln.startswith("- ") for ln in lines):
            items = "".join(f"<li>{_inline(ln[2:])}</li>" for ln in lines)
            parts.append(f"<ul>{items}</ul>")
        else:
            parts.append("<p>" + "<br>\n".join(_inline(ln) for ln in lines) + "</p>")
    return "\n".join(parts)


def _render_table(section: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in section.columns)
    body = []
    for i, row in enumerate(section.rows):
        if len(row) != len(section.columns):
            raise ValueError(f"table {section.title!r}: row {i} has {len(row)} cells, "
                             f"expected {len(section.columns)}")
        cells = "".join(
            f'<td class="num">{html.escape(format_value(v))}</td>' if _is_number(v)
            else f"<td>{html.escape(format_value(v))}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    note = f'<p class="note">{_inline(section.note)}</p>' if section.note else ""
    return (f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + f"\n</tbody></table>{note}")


def _data_uri(path: PathLike) -> str:
    p = Path(path)
    mime = MIME_TYPES.get(p.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed {p}: supported image types are {sorted(MIME_TYPES)}")
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f"data:{mime};base64,{data}"


def _render_figure(section: Figure) -> str:
    img = f'<img src="{_data_uri(section.path)}" alt="{html.escape(section.title, quote=True)}">'
    caption = f"<figcaption>{_inline(section.caption)}</figcaption>" if section.caption else ""
    return f"<figure>{img}{caption}</figure>"


def _render_key_values(section: KeyValues) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th>"
        f"<td{' class=num' if _is_number(v) else ''}>{html.escape(format_value(v))}</td></tr>"
        for k, v in section.values.items()
    )
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _render_section(section: Section) -> str:
    if isinstance(section, Table):
        return _render_table(section)
    if isinstance(section, Figure):
        return _render_figure(section)
    if isinstance(section, Text):
        return _render_text(section.text)
    return _render_key_values(section)


CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f4f5f7; color: #1d2330;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 1.7em; margin: 0.3em 0 0.6em; }
h2 { font-size: 1.25em; margin: 1.8em 0 0.6em; padding-bottom: 0.2em; border-bottom: 1px solid #d8dce3; }
nav ol { margin: 0; padding-left: 1.4em; columns: 2; }
nav a { color: #2451a6; text-decoration: none; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 0.95em; }
th, td { border: 1px solid #c9ced8; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #eef1f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: #f7f8fa; font-weight: 600; }
.note { color: #5a6272; font-size: 0.9em; margin-top: 0.3em; }
figure { margin: 0.5em 0; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #e3e6ec; }
figcaption { color: #5a6272; font-size: 0.9em; margin-top: 0.3em; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.9em; }
code { background: #f1f3f6; padding: 0 3px; border-radius: 3px; }
pre { background: #f7f8fa; border: 1px solid #e3e6ec; padding: 10px; overflow: auto; }
details { margin-top: 2em; }
summary { cursor: pointer; font-weight: 600; }
"""

# Nothing may be fetched: images are data: URIs, styles are inline, scripts do not exist.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_report(title: str, sections: Sequence[Section], config: Mapping[str, Any] | None = None) -> str:
    """The report's HTML as a string (see :func:`write_report`)."""
    toc, body = [], []
    for i, section in enumerate(sections, start=1):
        if not isinstance(section, Table | Figure | Text | KeyValues):
            raise TypeError(f"unknown report section {type(section).__name__}; "
                            "use Table, Figure, Text or KeyValues")
        anchor = f"s{i}"
        heading = html.escape(section.title)
        toc.append(f'<li><a href="#{anchor}">{heading}</a></li>')
        body.append(f'<section id="{anchor}">\n<h2>{heading}</h2>\n{_render_section(section)}\n</section>')
    nav = f"<nav><ol>{''.join(toc)}</ol></nav>" if len(sections) > 1 else ""
    details = ""
    if config is not None:
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        dumped = json.dumps(config, indent=2, sort_keys=True, default=str)
        details = f"<details><summary>Configuration</summary><pre>{html.escape(dumped)}</pre></details>"
    t = html.escape(title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{t}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{t}</h1>\n{nav}\n" + "\n".join(body) + f"\n{details}\n</main>\n</body>\n</html>\n"
    )


def write_report(
    out_path: PathLike,
    *,
    title: str,
    sections: Sequence[Section],
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the report to ``out_path`` atomically (temp file in the same folder, then os.replace).

    ``sections`` appear in order, each under its title, with a table of contents
    on top; ``config`` (a JSON-able dict) closes the page as pretty-printed JSON in
    a collapsed <details>. Images are read and embedded now, so the result stands alone.
    """
    text = render_report(title, sections, config)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
