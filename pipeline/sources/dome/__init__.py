"""The Dome API (end of life 2026-04-28), kept for Dome-shaped endpoints: client, parsing, ids, rows."""
