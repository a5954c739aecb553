"""Nightly scoring: the world as of a date, who is scored, batched adaptation and ranking."""
