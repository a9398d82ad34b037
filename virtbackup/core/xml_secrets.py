"""Secrets in a domain's XML, and the XML without them.

libvirt hands out the passwords of graphics consoles (`<graphics type='vnc'
passwd='...'>`, SPICE, RDP) only in the secure XML, which is what a backup stores as
domain.xml so that `restore --define` gives back the same domain. Such a password must
not leave the host in clear: a backup that is not encrypted stores its domain.xml without
them. The disks' own secrets (a Ceph key, an iSCSI CHAP password, a LUKS passphrase)
are never in the XML: libvirt keeps them in its secret store and the XML names them, by
uuid or by usage (`<auth username='u'><secret type='iscsi' usage='web-lun'/></auth>`).
The usage name says which host secret unlocks which storage, so it is left out too; a
disk restored from a backup is a plain file that needs no credentials.

Attributes are cut out of the text, not re-serialised through a parser, so that
everything else in the file stays byte for byte as libvirt wrote it.
"""

import re
import xml.etree.ElementTree as ET

# a <graphics ...> start tag; quoted values may hold '>'
_GRAPHICS_TAG = re.compile(r"<graphics\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_PASSWD = re.compile(r"\s+passwd\s*=\s*(?:\"[^\"]*\"|'[^']*')")
# a <secret ...> tag (a disk's <auth> or <encryption>) and its usage attribute
_SECRET_TAG = re.compile(r"<secret\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_USAGE = re.compile(r"\s+usage\s*=\s*(?:\"[^\"]*\"|'[^']*')")
_USAGE_NAME = "name (usage) of a host secret for a disk"


class SecretsError(ValueError):
    """The XML cannot be read, or a secret could not be removed from it."""


def secrets_in(xml: str) -> tuple[str, ...]:
    """What secrets the XML holds, e.g. ("vnc graphics password",)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise SecretsError(f"not well-formed XML: {err}") from None
    passwords = tuple(
        f"{graphics.get('type', 'unknown')} graphics password"
        for graphics in root.iter("graphics")
        if graphics.get("passwd") is not None
    )
    usages = any(secret.get("usage") is not None for secret in root.iter("secret"))
    return passwords + ((_USAGE_NAME,) if usages else ())


def without_secrets(xml: str) -> tuple[str, tuple[str, ...]]:
    """The XML without its secrets, and what was removed."""
    found = secrets_in(xml)
    if not found:
        return xml, ()

    def strip(match: re.Match[str]) -> str:
        return _PASSWD.sub("", match.group(0))

    def strip_usage(match: re.Match[str]) -> str:
        return _USAGE.sub("", match.group(0))

    stripped = _SECRET_TAG.sub(strip_usage, _GRAPHICS_TAG.sub(strip, xml))
    if secrets_in(stripped):
        raise SecretsError("a graphics password or a secret's usage could not be removed")
    return stripped, found
