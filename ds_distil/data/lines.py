"""Reading corpus lines in bounded memory.

A corpus line is a document, and a document is tokenized whole: a single 53 MB line once took
8 GB in `prepare` (the tokenizer keeps ~150 bytes per token). Lines are therefore read at most
`limit` bytes at a time; a longer line comes out as several pieces, cut at the last whitespace
before the limit (or, in a piece without any, at a UTF-8 character boundary), and each piece is
tokenized as a document of its own. Memory then depends on the limit, not on the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

_SPACE = b" \t\r\x0b\x0c"


def bounded_lines(f, limit: int) -> Iterator[tuple[bytes, bool]]:
    """(piece, continues) for the lines of binary file `f`, no piece longer than `limit` bytes (plus
    its newline). `continues` is True for every piece of an over-long line but its last one."""
    pending = b""
    while True:
        raw = f.readline(limit + 1 - len(pending))
        buf = pending + raw
        if not buf:
            return
        if buf.endswith(b"\n") or not raw or len(buf) <= limit:
            if not raw or buf.endswith(b"\n"):  # a whole line, the end of a long one, or the file's last line
                yield buf, False
                pending = b""
                continue
            pending = buf  # a short read (e.g. gzip): read on
            continue
        cut = max(buf.rfind(bytes([c]), 0, limit + 1) for c in _SPACE)
        if cut > 0:
            yield buf[:cut], True
            pending = buf[cut + 1:]
        else:
            cut = limit
            while cut > 0 and buf[cut] & 0xC0 == 0x80:  # not inside a multi-byte character
                cut -= 1
            yield buf[:cut], True
            pending = buf[cut:]


def split_long(text: str, limit: int) -> list[str]:
    """A document (already in memory, e.g. from a streamed dataset) as pieces of at most `limit` characters, cut at whitespace."""
    if len(text) <= limit:
        return [text]
    pieces = []
    while len(text) > limit:
        cut = max(text.rfind(c, 0, limit + 1) for c in " \t\n")
        cut = cut if cut > 0 else limit
        pieces.append(text[:cut])
        text = text[cut:].lstrip()
    return pieces + ([text] if text else [])
