"""Runs plans against the adapters. One sub-package per concern:

- methods:  how a domain's images are made safe to read and put back afterwards
            (libvirt snapshot, shutdown, offline, LVM snapshot; skip-free and trim
            around them). A new consistency method, such as the backup API, goes here.
- datapath: bytes in and out: the frame stream writer and readers, restore, verify.
            An export of a backup (NBD) builds on its readers.
- stores:   where backups live and how they are listed, opened, copied and pruned.
            A new place or layout for backups, such as a repository, goes here.
- runs:     one run over domains: sessions with their undo journal, signals, clean.
- shrink.py and doctor.py: the two commands that work beside backups.
"""
