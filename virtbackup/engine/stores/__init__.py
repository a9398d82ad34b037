"""Where backups live: listing, opening, copying offsite and pruning them."""
