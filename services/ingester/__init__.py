"""The ingester: validates, normalises, deduplicates and routes ``events.raw`` / ``items.raw``."""
