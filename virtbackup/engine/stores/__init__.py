"""Where backups live. `store` is the interface every place implements (list, begin a
partial backup, open a backup's files, remove) and the rules they share; `local` and
`remote` are its implementations; `retention` and `backup_access` (opening a backup for
restore and verify, signatures and encryption) work on any store."""
