"""CDR-Stats plugin for Kamailio: acc / missed_calls / acc_cdrs CDRs, live dialogs, htable bans.

See plugins/kamailio/README.md and docs/plugins/kamailio.md.
"""

from .plugin import KamailioPlugin, KamailioSource

__all__ = ["KamailioPlugin", "KamailioSource"]
