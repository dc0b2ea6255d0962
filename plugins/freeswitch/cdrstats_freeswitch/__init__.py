"""CDR-Stats plugin for FreeSWITCH: mod_cdr_csv, mod_cdr_sqlite, mod_cdr_pg_csv, mod_json_cdr /
mod_xml_cdr posts, and live calls over the Event Socket. See README.md."""

from .plugin import FreeswitchPlugin

__all__ = ["FreeswitchPlugin"]
