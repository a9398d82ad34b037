"""Test harness: real libvirtd, throw-away domains, the tiny guest, the nested VM, images."""
