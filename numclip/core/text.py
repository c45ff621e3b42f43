"""Text that can always be written: Linux file names may hold bytes that are not UTF-8."""


def printable(text: str) -> str:
    """`text` with undecodable file-name bytes (os.fsdecode's surrogates) shown as escapes (\\xff),
    so a CSV or a message holding it can be encoded as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
