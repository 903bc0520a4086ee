"""A report page of evaluation and training-health sections alone, for when no dataset is given."""
from __future__ import annotations

import time
from html import escape
from pathlib import Path

from curate import __version__
from curate.report.html import write_page
from curate.report.style import CSS, SCRIPT


def write_sections_page(out: str | Path, sections: list[tuple[str, str, str]], subject: str) -> dict:
    """``sections`` are (anchor, menu title, HTML); ``subject`` names what the page is about."""
    nav = "".join(f"<a href='#{a}'>{escape(t)}</a>" for a, t, _ in sections)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>Report: {escape(subject)}</title><style>{CSS}</style>"
            f"</head><body><header><div class='wrap'><div class='title'><h1>Evaluation and training report</h1>"
            f"<p class='sub'><code>{escape(subject)}</code> · prefcurate {__version__} · {when}</p></div><nav>{nav}</nav>"
            f"</div></header><main class='wrap'>{''.join(h for _, _, h in sections)}</main><footer class='wrap'>Made by "
            f"<code>prefcurate report</code>. Self-contained: no network access needed.</footer>{SCRIPT}</body></html>")
    return write_page(page, out)
