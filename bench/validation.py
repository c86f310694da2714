"""Messages for input that fails validation: the place, what was expected, what was found.

One formatter for every pydantic-validated input (the sweep file, its overrides, a
recipe given on a command line), so the same mistake reads the same wherever it is
made. Whatever a message quotes is bounded: a YAML alias bomb expands to gigabytes
when printed in full.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

# The most characters of a found value that a message quotes.
QUOTE_LIMIT = 120

_quote = reprlib.Repr()
_quote.maxlevel = 3
_quote.maxdict = _quote.maxlist = _quote.maxtuple = _quote.maxset = 6
_quote.maxstring = _quote.maxother = 60


# A password in a URL (https://user:secret@host, also a mistyped one: http//user:secret@host):
# never printed, stored or sent on.
_PASSWORD_IN_URL = re.compile(r'((?:^|[/\s\'"=])[^/\s:@\'"=]*):[^@\s/\'"]+@')


def without_secrets(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _PASSWORD_IN_URL.sub(r'\1:***@', text)


# Control characters (C0, DEL, C1: a terminal runs ESC and CSI sequences), the line
# separators (text of ours is one line, in a terminal as in a README) and the
# bidirectional embeddings, overrides, isolates and marks (they show text in another order
# than it is, in a terminal, a browser and an editor alike).
_CONTROL = re.compile(
    r'[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]+'
)


def one_line(value: object) -> str:
    """str(value) as one line of inert text for any output: control characters become
    spaces, and lone surrogates (a file name's undecodable bytes, a crafted JSON string)
    backslash escapes, which every encoder can write."""
    text = str(value).encode('utf-8', 'backslashreplace').decode('utf-8')
    return _CONTROL.sub(' ', text)


def last_line(text: object) -> str:
    """The last line of a (stored) message that holds text, as one_line; '' for none."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return one_line(lines[-1].strip()) if lines else ''


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ('=', '+', '-', '@', '\t', '\r')


def spreadsheet_text(value: object) -> object:
    """A value for a CSV file that a spreadsheet opens: text that starts like a formula
    gets a leading apostrophe, which shows it as text; anything else as it is."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def bounded(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to at most `limit` characters, the cut marked with '...'."""
    return text if len(text) <= limit else text[: limit - 3] + '...'


def bounded_repr(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr(value), cut to at most `limit` characters whatever the value's size."""
    return bounded(without_secrets(_quote.repr(value)), limit)


def describe_error(
    error: ErrorDetails,
    source: str,
    prefix: Sequence[str | int] = (),
    valid_keys: Callable[[list[str]], Iterable[str] | None] | None = None,
) -> str:
    """One pydantic error (an item of ValidationError.errors()) as `source: where: what
    (found ...)`. `prefix` is where the validated value sits in the file;
    `valid_keys(parent_location)` lists the keys an unknown key could have meant."""
    kind = error['type']
    loc = [str(part) for part in (*prefix, *error['loc'])]
    head = f'{source}: ' if source else ''
    where = '.'.join(loc) or '(top level)'
    if kind in ('extra_forbidden', 'unexpected_keyword_argument'):
        hint = valid_keys(loc[:-1]) if valid_keys else None
        return f'{head}{where}: unknown key' + (f'; valid keys: {", ".join(hint)}' if hint else '')
    if kind == 'missing':
        return f'{head}{where}: required key is missing'
    message = error['msg'].removeprefix('Value error, ')
    if not error['loc']:  # a check across keys: the whole value is its input
        return f'{head}{where}: {message}' if prefix else f'{head}{message}'
    return f'{head}{where}: {message} (found {bounded_repr(error.get("input"))})'
