"""CDR-Stats web console: mounted by the collector (see issue on the console)."""
