"""Rules: the tenant's alert rules; tenant admins create, edit, enable, disable and delete them.

    GET  /t/{tenant}/rules                   list and editor (?edit=ID fills it with a rule)
    POST /t/{tenant}/rules                   create
    POST /t/{tenant}/rules/{id}              update (the whole form)
    POST /t/{tenant}/rules/{id}/enabled      enabled=1|0
    POST /t/{tenant}/rules/{id}/delete

Validation, storage and the audit entry are `cdrstats_collector.rules` (the functions behind
the rules API): a `RuleError` is shown on the page as is, naming the field at fault, and
changes nothing. Another tenant's rule id is 404, as for a rule that does not exist.
"""

from __future__ import annotations

from typing import Any

from cdrstats_collector import auth, rules
from cdrstats_collector.state import get_state
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import data
from .console import Console, page

FORBIDDEN = "only a tenant admin may change rules"
ADMIN_ROLES = auth.ADMIN_ROLES
WINDOWS = [(300, "5 minutes"), (3600, "1 hour"), (86400, "24 hours")]
SCOPE_FIELDS = ("switch", "trunk", "dest_prefix", "dest_country", "direction")
METRIC_PARAMS = ("op", *rules._METRIC_PARAMS)
EVENT_PARAMS = {kind: tuple(specs) for kind, specs in rules._EVENT_PARAMS.items()}
PARAM_FIELDS = tuple(
    dict.fromkeys(["per", *METRIC_PARAMS, *(p for ps in EVENT_PARAMS.values() for p in ps)])
)
KIND_LABELS = {
    "asr": "ASR (answer-seizure ratio, %)",
    "ner": "NER (network effectiveness ratio, %)",
    "acd": "ACD (average call duration, s)",
    "aloc": "ALOC (average length of conversation, s)",
    "calls": "Call volume",
    "concurrent": "Concurrent calls",
    "risk_destination": "Calls to high-risk / premium destinations",
    "blacklist": "Calls to blacklisted destinations",
    "new_country": "First calls to a new country",
    "short_calls": "Bursts of short calls",
    "scanner": "Failed calls or registrations from one source IP (scanner)",
}


def params_of(kind: str) -> tuple[str, ...]:
    """The parameters a kind takes (the editor shows only these)."""
    return ("per", *(METRIC_PARAMS if kind in rules.METRIC_KINDS else EVENT_PARAMS.get(kind, ())))


def _number(text: str) -> Any:
    """A form value as int, float or bool (`true`/`false`) when it is one; the text otherwise
    (parse_rule names it)."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def doc_from_form(form: FormData) -> dict[str, Any]:
    """The rule document of the editor's form (empty fields left out)."""

    def text(name: str) -> str:
        return str(form.get(name) or "").strip()[:200]

    kind = text("kind")
    doc: dict[str, Any] = {
        "name": text("name"),
        "kind": kind,
        "enabled": bool(form.get("enabled")),
        "severity": text("severity") or "warning",
        "action": text("action") or "notify",
        "scope": {k: text(f"scope.{k}") for k in SCOPE_FIELDS if text(f"scope.{k}")},
        "params": {},
    }
    for key in ("window_s", "block_ttl_s", "snooze_s"):
        if text(key):
            doc[key] = _number(text(key))
    for key in params_of(kind):
        value = text(f"params.{key}")
        if value:
            doc["params"][key] = value if key in ("op", "per") else _number(value)
    return doc


def _summary(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "–"  # noqa: RUF001


async def _render(
    console: Console,
    request: Request,
    extra: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    who, tenant, tenants_ = await console.tenant_context(request)
    tid = int(tenant["id"])
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        found = await rules.list_rules(conn, tid)
    for r in found:
        r["scope_text"] = _summary(r["scope"])
        r["params_text"] = _summary(r["params"])
    form: dict[str, Any] = {}
    edit = request.query_params.get("edit", "")
    if edit.isdigit():
        form = next((r for r in found if r["id"] == int(edit)), {})
        if not form:
            raise HTTPException(404, f"no rule {edit} in this tenant")
    context: dict[str, Any] = {
        "who": who,
        "tenant": tenant,
        "tenants": tenants_,
        "rules": found,
        "can_act": who.role in ADMIN_ROLES,
        "form": form,
        "kinds": [(k, KIND_LABELS.get(k, k)) for k in rules.KINDS],
        "metric_kinds": list(rules.METRIC_KINDS),
        "kind_params": {k: list(params_of(k)) for k in rules.KINDS},
        "param_fields": PARAM_FIELDS,
        "ops": rules.OPS,
        "pers": rules.PER,
        "severities": rules.SEVERITIES,
        "actions": rules.ACTIONS,
        "directions": rules.DIRECTIONS,
        "windows": WINDOWS,
        "switches": await data.switches(get_state(request).pool, tid),
        "saved": request.query_params.get("saved", "")[:100],
        "active": "rules",
        **(extra or {}),
    }
    return console.render(request, "rules.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request)


def _done(tenant_id: int, message: str) -> Response:
    from urllib.parse import quote

    return RedirectResponse(f"/t/{tenant_id}/rules?saved={quote(message)}", status_code=303)


def _form_back(doc: dict[str, Any], rule_id: int | None) -> dict[str, Any]:
    """What the editor shows again after a refusal (what was typed)."""
    return {**doc, "id": rule_id}


@page
async def create(console: Console, request: Request) -> Response:
    form, who, tid = await console.admin_form(request, FORBIDDEN)
    doc = doc_from_form(form)
    try:
        async with get_state(request).pool.connection() as conn:
            rule = await rules.create_rule(conn, tid, doc, who.username, user_id=who.user_id)
    except rules.RuleError as exc:
        return await _render(
            console, request, {"error": str(exc), "form": _form_back(doc, None)}, 422
        )
    return _done(tid, f"rule {rule['name']} created")


@page
async def update(console: Console, request: Request) -> Response:
    form, who, tid = await console.admin_form(request, FORBIDDEN)
    rule_id = int(request.path_params["rule"])
    doc = doc_from_form(form)
    try:
        async with get_state(request).pool.connection() as conn:
            rule = await rules.update_rule(
                conn, tid, rule_id, doc, who.username, user_id=who.user_id
            )
    except rules.RuleNotFound:
        raise HTTPException(404, f"no rule {rule_id} in this tenant") from None
    except rules.RuleError as exc:
        return await _render(
            console, request, {"error": str(exc), "form": _form_back(doc, rule_id)}, 422
        )
    return _done(tid, f"rule {rule['name']} saved")


@page
async def set_enabled(console: Console, request: Request) -> Response:
    form, who, tid = await console.admin_form(request, FORBIDDEN)
    rule_id = int(request.path_params["rule"])
    enabled = str(form.get("enabled") or "") == "1"
    try:
        async with get_state(request).pool.connection() as conn:
            rule = await rules.update_rule(
                conn, tid, rule_id, {"enabled": enabled}, who.username, user_id=who.user_id
            )
    except rules.RuleNotFound:
        raise HTTPException(404, f"no rule {rule_id} in this tenant") from None
    except rules.RuleError as exc:
        return await _render(console, request, {"error": str(exc)}, 422)
    return _done(tid, f"rule {rule['name']} {'enabled' if enabled else 'disabled'}")


@page
async def delete(console: Console, request: Request) -> Response:
    _form, who, tid = await console.admin_form(request, FORBIDDEN)
    rule_id = int(request.path_params["rule"])
    async with get_state(request).pool.connection() as conn:
        gone = await rules.delete_rule(conn, tid, rule_id, who.username, user_id=who.user_id)
    if not gone:
        raise HTTPException(404, f"no rule {rule_id} in this tenant")
    return _done(tid, f"rule {rule_id} deleted")
