"""Runs plans against the adapters. One sub-package per concern:

- methods:  how a domain's images are made safe to read and put back afterwards
            (libvirt snapshot, shutdown, offline, LVM snapshot; skip-free and trim
            around them). A new consistency method, such as the backup API, goes here.
- datapath: bytes in and out: the frame stream writer and readers, restore, verify.
            An export of a backup (NBD) builds on its readers.
- stores:   where backups live and how they are listed, opened, copied and pruned.
            A new place or layout for backups, such as a repository, goes here.
- runs:     one run over domains: sessions with their undo journal, signals, clean.
- shrink:   making stopped domains' images small (in place or as a new copy);
            its guest_reclaim does the work inside the appliance for shrink and for
            skip-free backups.
- health:   how well backups go: doctor (what would stop them), run records and
            monitoring (what runs left, for `check` and the metrics file).
"""
