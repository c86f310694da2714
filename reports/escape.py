"""Text from the store or the sweep file, made inert in each output format.

A data folder's name, a sweep's name, a stored error or recipe, a model name in a
crafted sweep.json: anything that did not come from this package's own templates is
text, never markup. HTML gets entities (Jinja's autoescape); Markdown gets backslash
escapes for every character that could start markup (CommonMark's inline syntax,
raw HTML and GFM's tables and strikethrough), so `x<img src=x onerror=...>` or a
`<!-- results:end -->` in a folder name stays text in README.md and table.md.
Line breaks and other control characters become spaces: a blank line would end the
README's HTML block, and text of ours is one line.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from markupsafe import Markup

from bench.validation import one_line

__all__ = ['html_text', 'markdown_text', 'markdown_url', 'one_line']

_MARKDOWN_SPECIAL = re.compile(r'([\\`*_\[\]<>|~&!#])')


def markdown_text(value: object) -> str:
    """`value` as literal text in Markdown (and in GFM table cells)."""
    if isinstance(value, Markup):  # made by our own templates, escaped already
        return str(value)
    return _MARKDOWN_SPECIAL.sub(r'\\\1', one_line(value))


def html_text(value: object) -> str:
    """`value` for Jinja's HTML autoescape (which then makes it entities): on one line, so
    that no stored text can end the README's HTML block with a blank line."""
    return value if isinstance(value, Markup) else one_line(value)


def markdown_url(path: str) -> Markup:
    """A relative path as a Markdown link destination: percent-encoded, so no character of
    it can end the link or start markup."""
    # The path as it is: percent-encoding alone makes it inert, and a character taken out
    # (a direction mark in a folder's name) would point the link at no file.
    return Markup(quote(path, safe='/', errors='surrogateescape'))
