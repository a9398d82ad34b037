"""Text from outside (domain names, paths, what a backup holds) made safe to show.

A libvirt domain name, a directory in DEST or a field of a crafted backup may hold
terminal control sequences (ESC), bidirectional overrides or line breaks: shown as they
are they could repaint the terminal, hide part of a line or fake a log line. Every such
character is shown as its escape instead.
"""


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every character a terminal would act on written as an escape
    (``\\x1b``, ``\\u202e``); line breaks kept only when asked (table cells)."""
    if text.isprintable():
        return text  # the common case, checked at C speed
    return "".join(
        c if c.isprintable() or (keep_newlines and c == "\n") else ascii(c)[1:-1] for c in text
    )
