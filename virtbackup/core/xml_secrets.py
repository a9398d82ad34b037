"""Secrets in a domain's XML, and the XML without them.

libvirt hands out the passwords of graphics consoles (`<graphics type='vnc'
passwd='...'>`, SPICE, RDP) only in the secure XML, which is what a backup stores as
domain.xml so that `restore --define` gives back the same domain. Such a password must
not leave the host in clear: a backup that is not encrypted stores its domain.xml without
them (the disks' own secrets are never in the XML: libvirt keeps those in its secret
store and the XML only names them).

Attributes are cut out of the text, not re-serialised through a parser, so that
everything else in the file stays byte for byte as libvirt wrote it.
"""

import re
import xml.etree.ElementTree as ET

# a <graphics ...> start tag; quoted values may hold '>'
_GRAPHICS_TAG = re.compile(r"<graphics\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_PASSWD = re.compile(r"\s+passwd\s*=\s*(?:\"[^\"]*\"|'[^']*')")


class SecretsError(ValueError):
    """The XML cannot be read, or a secret could not be removed from it."""


def secrets_in(xml: str) -> tuple[str, ...]:
    """What secrets the XML holds, e.g. ("vnc graphics password",)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise SecretsError(f"not well-formed XML: {err}") from None
    return tuple(
        f"{graphics.get('type', 'unknown')} graphics password"
        for graphics in root.iter("graphics")
        if graphics.get("passwd") is not None
    )


def without_secrets(xml: str) -> tuple[str, tuple[str, ...]]:
    """The XML without its secrets, and what was removed."""
    found = secrets_in(xml)
    if not found:
        return xml, ()

    def strip(match: re.Match[str]) -> str:
        return _PASSWD.sub("", match.group(0))

    stripped = _GRAPHICS_TAG.sub(strip, xml)
    if secrets_in(stripped):
        raise SecretsError("a graphics password could not be removed")
    return stripped, found
