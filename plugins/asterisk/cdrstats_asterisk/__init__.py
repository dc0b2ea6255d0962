"""CDR-Stats plugin for Asterisk: cdr_csv, the cdr table (MariaDB/MySQL, PostgreSQL, SQLite,
legacy cdr_mysql) and live calls over AMI. See README.md and docs/plugins/asterisk.md."""

from .plugin import AsteriskLiveSource, AsteriskPlugin, AsteriskSource

__all__ = ["AsteriskLiveSource", "AsteriskPlugin", "AsteriskSource"]
