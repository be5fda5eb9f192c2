"""Store: what persists between runs. The variant store (SQLite: recipes + measurements,
never pickled models) and the analysis cache (importance, head statistics) on disk."""
