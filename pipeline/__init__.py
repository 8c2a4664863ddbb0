"""The Polymarket wallet trade backfill: Dome API -> staging -> one transactional commit per run."""
