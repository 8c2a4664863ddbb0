"""The Dome API: client, limiter, parsing and trade ids (plain Python, no Beam)."""
