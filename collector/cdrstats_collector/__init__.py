"""CDR-Stats collector: ingest API, PostgreSQL store, admin CLI."""
