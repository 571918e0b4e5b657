"""Per-user rate limits (Redis, GCRA) and quotas (database facts), and the public-bind guard."""
