"""CSV import pages: upload, preview and mapping, progress, summary (docs/csv-import.md).

    /t/{tenant}/import        choose a file, see it parsed, map columns, import (admins);
                              the tenant's recent imports (everyone)
    /t/{tenant}/import/{job}  one import's progress and summary, watchable from any tab

The pages only render their frame: the browser (static/import.js) talks to the collector's
import API (`cdrstats_collector.import_api`: preview, upload, jobs, rejected rows, profiles)
with the session cookie and the `X-CSRF-Token` header, and follows a job through the tab's
SSE stream (`import` events, from NOTIFY cdrstats_import).
"""

from __future__ import annotations

import uuid
from typing import Any

from cdrstats_collector import auth, csvimport
from cdrstats_collector.state import get_state
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from . import data
from .console import Console, page

ADMIN_ROLES = auth.ADMIN_ROLES

FIELDS: tuple[tuple[str, str], ...] = (
    ("start", "Start time"),
    ("answer", "Answer time"),
    ("end", "End time"),
    ("duration", "Duration"),
    ("billsec", "Billed seconds"),
    ("ring_time", "Ring time"),
    ("caller", "Caller (A number)"),
    ("caller_name", "Caller name"),
    ("callee", "Callee (B number)"),
    ("disposition", "Disposition"),
    ("hangup_cause", "Q.850 hangup cause"),
    ("sip_code", "SIP code"),
    ("direction", "Direction"),
    ("accountcode", "Account code"),
    ("trunk", "Trunk / gateway"),
    ("src_ip", "Source IP"),
    ("user_agent", "User agent"),
    ("key", "Unique id (dedup key)"),
)
"""CDR fields offered on the mapping form (csv plugin names), with their labels."""

TIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
    "%d.%m.%Y %H:%M:%S",
    "%Y%m%d%H%M%S",
    "iso8601",
    "epoch",
    "epoch_ms",
)


async def _context(console: Console, request: Request) -> dict[str, Any]:
    who, tenant, tenants = await console.tenant_context(request)
    return {
        "who": who,
        "tenant": tenant,
        "tenants": tenants,
        "switches": await data.switches(get_state(request).pool, tenant["id"]),
        "today": data.local_today(tenant["timezone"]).isoformat(),
        "active": "import",
        "can_import": who.role in ADMIN_ROLES,
    }


@page
async def view(console: Console, request: Request) -> Response:
    context = await _context(console, request)
    context.update(
        fields=FIELDS,
        time_formats=TIME_FORMATS,
        builtin_profiles=list(csvimport.BUILTIN_PROFILES),
    )
    return console.render(request, "import.html", context)


@page
async def job(console: Console, request: Request) -> Response:
    context = await _context(console, request)
    try:
        context["job_id"] = str(uuid.UUID(request.path_params["job"]))
    except ValueError:
        raise HTTPException(404, "no such import") from None
    return console.render(request, "import_job.html", context)
