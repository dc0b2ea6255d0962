"""CDR-Stats freeswitch plugin: not written yet (see its issue)."""
