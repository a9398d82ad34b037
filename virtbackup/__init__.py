"""virtbackup: backup manager for KVM hosts run by libvirt."""

__version__ = "0.1.0"

# Version of the on-disk backup layout (manifest.json, stream index). Bumped on
# any change a reader of older backups must know about.
FORMAT_VERSION = 1
