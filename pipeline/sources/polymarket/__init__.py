"""Polymarket's public Data API v2 and Gamma: the default source (no key)."""
