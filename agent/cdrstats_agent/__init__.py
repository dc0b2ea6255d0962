"""CDR-Stats agent: runs beside a switch and pushes its CDRs to the collector."""

__version__ = "0.1.0"
