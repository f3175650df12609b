"""Files of samples, exactly one per line (``flowzoo sample --output``).

Characters that end a line (for ``str.splitlines`` too) are written escaped: a newline as the two characters
``\\n``, likewise ``\\r``, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028``, ``\\u2029``, and a backslash as
``\\\\`` so that :func:`read_samples` gives back exactly what was written. An EOS is whatever the data module's
``decode`` writes for it (its token, e.g. ``<|endoftext|>``): already visible.
"""

from __future__ import annotations

import re

_LINE_ESCAPES = {ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\v"): "\\v", ord("\f"): "\\f",
                 **{c: f"\\x{c:02x}" for c in (0x1C, 0x1D, 0x1E, 0x85)}, 0x2028: "\\u2028", 0x2029: "\\u2029"}
_LINE_UNESCAPE = re.compile(r"\\(\\|n|r|v|f|x[0-9a-f]{2}|u[0-9a-f]{4})")


def escape_line(text: str) -> str:
    """``text`` on one line: a newline written as the two characters ``\\n`` (also ``\\r``, ``\\v``, ``\\f``,
    ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028``, ``\\u2029``), a backslash as ``\\\\``; :func:`unescape_line` inverts it."""
    return text.translate(_LINE_ESCAPES)


def unescape_line(line: str) -> str:
    simple = {"\\": "\\", "n": "\n", "r": "\r", "v": "\v", "f": "\f"}
    return _LINE_UNESCAPE.sub(lambda m: simple.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), line)


def write_samples(path, texts: list[str]) -> None:
    """Write ``texts`` to ``path`` (UTF-8), exactly one sample per line (:func:`escape_line`)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(escape_line(t) + "\n" for t in texts)


def read_samples(path) -> list[str]:
    """The samples of a file written by :func:`write_samples` (``flowzoo sample --output``)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        return [unescape_line(line[:-1] if line.endswith("\n") else line) for line in f]
