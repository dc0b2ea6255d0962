"""Built-in mappings for the CSV files switches write: Asterisk cdr_csv, FreeSWITCH mod_cdr_csv.

* `asterisk`: `Master.csv` of cdr_csv. 16 columns, 18 with `loguniqueid`+`loguserfield`,
  21 with `newcdrcolumns`; the layout is chosen per row by its column count (or forced with
  `columns`). Key uniqueid:sequence (21), uniqueid (18), content hash (16).
* `freeswitch-example`, `freeswitch-default`: the `example` template of the vanilla
  cdr_csv.conf.xml and the `default` template built into mod_cdr_csv (stray space included).
* `freeswitch-template`: any template, given as the `template` option; its `${var}` list
  names the columns and known variables map to CDR fields (table `FREESWITCH_VARIABLES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .mapping import ColRef, FieldInput
from .records import Template

PRESET_NAMES = ("asterisk", "freeswitch-example", "freeswitch-default", "freeswitch-template")

ASTERISK_16 = (
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
)
ASTERISK_18 = (*ASTERISK_16, "uniqueid", "userfield")
ASTERISK_21 = (*ASTERISK_18, "peeraccount", "linkedid", "sequence")
ASTERISK_LAYOUTS = {16: ASTERISK_16, 18: ASTERISK_18, 21: ASTERISK_21}

FREESWITCH_EXAMPLE = (
    '"${caller_id_name}","${caller_id_number}","${destination_number}","${context}",'
    '"${start_stamp}","${answer_stamp}","${end_stamp}","${duration}","${billsec}",'
    '"${hangup_cause}","${uuid}","${bleg_uuid}","${accountcode}","${read_codec}",'
    '"${write_codec}"'
)
"""The `example` template of FreeSWITCH's vanilla cdr_csv.conf.xml (its default-template)."""

FREESWITCH_DEFAULT = (
    '"${caller_id_name}","${caller_id_number}","${destination_number}","${context}",'
    '"${start_stamp}","${answer_stamp}","${end_stamp}","${duration}","${billsec}",'
    '"${hangup_cause}","${uuid}","${bleg_uuid}", "${accountcode}"'
)
"""The template built into mod_cdr_csv, used when no default-template is configured.
Note the space before the last field."""

FREESWITCH_VARIABLES: dict[str, tuple[str, FieldInput]] = {
    # variable: (CDR field, how to read it). Several variables may feed one field; the
    # first one listed here that is present and non-empty in a row wins. `uuid` is the key.
    "caller_id_name": ("caller_name", FieldInput("caller_id_name")),
    "caller_id": ("caller_name", FieldInput("caller_id", transform="callerid_name")),
    "caller_id_number": ("caller", FieldInput("caller_id_number")),
    "ani": ("caller", FieldInput("ani")),
    "destination_number": ("callee", FieldInput("destination_number")),
    "start_stamp": ("start", FieldInput("start_stamp")),
    "start_epoch": ("start", FieldInput("start_epoch", time_formats=("epoch",))),
    "start_uepoch": ("start", FieldInput("start_uepoch", time_formats=("epoch_us",))),
    "answer_stamp": ("answer", FieldInput("answer_stamp")),
    "answer_epoch": ("answer", FieldInput("answer_epoch", time_formats=("epoch",))),
    "answer_uepoch": ("answer", FieldInput("answer_uepoch", time_formats=("epoch_us",))),
    "end_stamp": ("end", FieldInput("end_stamp")),
    "end_epoch": ("end", FieldInput("end_epoch", time_formats=("epoch",))),
    "end_uepoch": ("end", FieldInput("end_uepoch", time_formats=("epoch_us",))),
    "duration": ("duration", FieldInput("duration")),
    "billsec": ("billsec", FieldInput("billsec")),
    "hangup_cause": ("hangup_cause", FieldInput("hangup_cause")),
    "hangup_cause_q850": ("hangup_cause", FieldInput("hangup_cause_q850")),
    "accountcode": ("accountcode", FieldInput("accountcode")),
    "read_codec": ("read_codec", FieldInput("read_codec")),
    "write_codec": ("write_codec", FieldInput("write_codec")),
    "sip_user_agent": ("user_agent", FieldInput("sip_user_agent")),
    "network_addr": ("src_ip", FieldInput("network_addr")),
    "sip_received_ip": ("src_ip", FieldInput("sip_received_ip")),
    "sip_network_ip": ("src_ip", FieldInput("sip_network_ip")),
    "sip_gateway_name": ("trunk", FieldInput("sip_gateway_name")),
    "direction": ("direction", FieldInput("direction")),
    "sip_term_status": ("sip_code", FieldInput("sip_term_status")),
    "call_uuid": ("call_group", FieldInput("call_uuid")),
}


@dataclass(frozen=True)
class Preset:
    """A built-in mapping: columns, fields, key, and the file pattern to follow."""

    name: str
    fields: dict[str, tuple[FieldInput, ...]]
    key: tuple[ColRef, ...]
    layouts: tuple[tuple[str, ...], ...]
    template: Template | None = None
    pattern: str = "Master.csv*"
    columns: tuple[str, ...] = field(default=())
    """Every column name any layout has (for validating user overrides)."""


def asterisk(columns: int | None = None) -> Preset:
    """cdr_csv's Master.csv; `columns` forces one layout (16, 18 or 21)."""
    layouts = (
        (ASTERISK_LAYOUTS[columns],) if columns is not None else tuple(ASTERISK_LAYOUTS.values())
    )
    fields = {
        "accountcode": (FieldInput("accountcode"),),
        "caller": (FieldInput("src"), FieldInput("clid", transform="callerid_number")),
        "caller_name": (FieldInput("clid", transform="callerid_name"),),
        "callee": (FieldInput("dst"),),
        "channel": (FieldInput("channel"),),
        "dstchannel": (FieldInput("dstchannel"),),
        "start": (FieldInput("start"),),
        "answer": (FieldInput("answer"),),
        "end": (FieldInput("end"),),
        "duration": (FieldInput("duration"),),
        "billsec": (FieldInput("billsec"),),
        "disposition": (FieldInput("disposition"),),
        "call_group": (FieldInput("linkedid"),),
    }
    return Preset(
        name="asterisk",
        fields=fields,
        key=("uniqueid", "sequence"),
        layouts=layouts,
        columns=ASTERISK_21,
    )


def freeswitch(name: str, template: Template) -> Preset:
    """A mod_cdr_csv template: its variables are the columns; known ones map to fields."""
    present = set(template.names)
    fields: dict[str, tuple[FieldInput, ...]] = {}
    for variable, (target, source) in FREESWITCH_VARIABLES.items():
        if variable in present:
            fields[target] = (*fields.get(target, ()), source)
    return Preset(
        name=name,
        fields=fields,
        key=("uuid",) if "uuid" in present else (),
        layouts=(template.names,),
        template=template,
        columns=template.names,
    )


def build(name: str, *, columns: int | None = None, template: Template | None = None) -> Preset:
    """The preset called `name` (one of PRESET_NAMES); `template` for freeswitch-template."""
    if name == "asterisk":
        return asterisk(columns)
    if name == "freeswitch-example":
        return freeswitch(name, Template.parse(FREESWITCH_EXAMPLE))
    if name == "freeswitch-default":
        return freeswitch(name, Template.parse(FREESWITCH_DEFAULT))
    if name == "freeswitch-template":
        if template is None:
            raise ValueError("freeswitch-template needs a template")
        return freeswitch(name, template)
    raise ValueError(f"unknown preset {name!r}")
