"""One run over domains: sessions and their undo journal, stop signals, clean."""
