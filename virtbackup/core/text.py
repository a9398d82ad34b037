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


def one_line(phrase: str) -> str:
    """`phrase` as one line a terminal shows as it is, for a short description of what a
    backup holds: whitespace runs become one space, any other character a terminal
    would act on becomes "?"."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(phrase.split()))
