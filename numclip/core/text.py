"""Text that can always be written: Linux file names may hold bytes that are not UTF-8."""


def printable(text: str) -> str:
    """`text` with the bytes of a file name that are not UTF-8 (os.fsdecode's surrogates) shown as
    escapes (caf\\xe9.png), so a CSV or a message holding it encodes as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name gave
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
