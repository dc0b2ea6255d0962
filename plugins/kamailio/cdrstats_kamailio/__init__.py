"""CDR-Stats kamailio plugin: not written yet (see its issue)."""
