"""What `all` says when it has no domain to back up, instead of an empty table."""


def nothing_to_back_up(host_domains: int, selected: int) -> str | None:
    """The one line for a run that selected no domain, or None when it selected some."""
    if selected:
        return None
    if not host_domains:
        return "no domain to back up: this host has no domains"
    what = "the one domain" if host_domains == 1 else f"all {host_domains} domains"
    return (
        f"no domain to back up: {what} of this host excluded by include/exclude "
        "(options or configuration)"
    )
