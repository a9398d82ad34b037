"""Files out of a backup without restoring it: `files ls|get` and `mount`."""
