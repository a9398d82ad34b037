"""Bytes in and out: frame streams written and read, restore and verify."""
