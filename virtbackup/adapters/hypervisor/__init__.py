"""The one boundary to libvirt: a `Hypervisor` owns the connection and hands out
`Domain`s; both answer with our types (DomainFacts, DomainState, ...) and raise our
errors. Nothing outside this package imports the libvirt bindings.

    bindings    the lazy import of the bindings, libvirt's errors made ours
    connection  Hypervisor: connect, look-ups, discovery, define
    domain      Domain: state, overlays and block jobs, shutdown and start, the guest agent
    discovery   the facts of a domain and of its disks (used by Hypervisor)
"""
