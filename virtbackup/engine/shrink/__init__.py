"""`virtbackup shrink`: make stopped domains' images small. `domains` runs the loop over
domains and the in-place mode, `copy_mode` writes a new compact image; the work inside
the appliance is `guest_reclaim` (shared with skip-free backups)."""
