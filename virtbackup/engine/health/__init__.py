"""How well backups go on this host, read without changing anything that backups use.
`doctor` looks ahead (what would stop small, consistent backups); `run_records` and
`monitoring` look back (the last attempt per domain, what `check` and the metrics file
report). The judging is pure, in core (doctor, check, metrics, run_record)."""
