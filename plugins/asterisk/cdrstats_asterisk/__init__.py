"""CDR-Stats asterisk plugin: not written yet (see its issue)."""
