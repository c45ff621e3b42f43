"""Text that can always be written: Linux file names may hold bytes that are not UTF-8."""


def printable(text: str) -> str:
    """`text` with the bytes of a file name that are not UTF-8 (os.fsdecode's surrogates) shown as
    escapes (caf\\xe9.png), so a CSV or a message holding it encodes as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name gave
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(detail: object, limit: int = 400) -> str:
    """A library's message (often several lines, sometimes pages) as one line of at most `limit`
    characters, to follow numclip's own words in an error."""
    text = " ".join(str(detail).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
