"""Reading the mapping options of a `[[source]]` table (or of a collector upload) into a Mapping.

Validation only, no I/O; every problem is a ConfigError naming the key. The follow options
(path, pattern, interval...) are read by plugin.py from the `Options` returned here.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any

from cdrstats_agent.errors import ConfigError
from cdrstats_agent.model import Disposition
from cdrstats_agent.options import Options

from .mapping import (
    DEFAULT_TIME_FORMATS,
    MAPPABLE_FIELDS,
    TIME_FIELDS,
    ColRef,
    FieldInput,
    Mapping,
    MappingSpec,
    ascii_compatible,
)
from .presets import PRESET_NAMES, Preset, build
from .records import Template
from .stamps import DURATION_UNITS, check_format

_UNION_KEYS = ("fields", "key", "time_format", "country_code")
"""Keys whose value may have several TOML types; read here rather than through Options."""


@dataclass(frozen=True)
class MappingConfig:
    mapping: Mapping
    preset: Preset | None
    pattern: str
    """Default file pattern for a directory: the preset's, else `*.csv`."""


def _name(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _colref(value: Any, key: str) -> ColRef:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(key, f"must be a column name or number, got {value!r:.60}")
    if isinstance(value, int) and value < 1:
        raise ConfigError(key, f"column numbers start at 1, got {value}")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(key, "must not be empty")
    return value


def _colrefs(value: Any, key: str) -> tuple[ColRef, ...]:
    if isinstance(value, list):
        if not value:
            raise ConfigError(key, "must name at least one column")
        return tuple(_colref(v, f"{key}[{i}]") for i, v in enumerate(value))
    return (_colref(value, key),)


def _check_ref(
    ref: ColRef, key: str, *, header: bool, names: tuple[str, ...] | None, what: str
) -> None:
    if isinstance(ref, int):
        if names is not None and ref > len(names):
            raise ConfigError(key, f"column {ref} does not exist: {what} has {len(names)} columns")
        return
    if header:
        return
    if names is None:
        raise ConfigError(
            key,
            f"column name {ref!r} needs `header = true` or `column_names`",
            hint="or give the column number, counting from 1",
        )
    if ref not in names:
        raise ConfigError(key, f"no column {ref!r} in {what}", hint=f"columns: {', '.join(names)}")


def read_mapping(table: MappingABC[str, Any], prefix: str = "") -> tuple[MappingConfig, Options]:
    """Read every mapping option; returns the unfinished Options for the caller's own keys."""
    table = dict(table)
    special = {k: table.pop(k) for k in _UNION_KEYS if k in table}
    opts = Options(table, prefix)

    def key_of(key: str) -> str:
        return _name(prefix, key)

    preset_name = opts.choice("preset", PRESET_NAMES, None)
    columns = opts.integer("columns", None)
    usegmtime = opts.flag("usegmtime", None)
    template_text = opts.text("template", None)
    broken_quotes = opts.choice("broken_quotes", ("recover", "reject"), None)
    header = opts.flag("header", None)
    column_names = opts.text_list("column_names", None)
    delimiter = opts.text("delimiter", None)
    quotechar = opts.text("quotechar", None)
    max_record_lines = opts.integer("max_record_lines", None, minimum=1)

    def only(key: str, value: Any, allowed: bool, where: str) -> None:
        if value is not None and not allowed:
            raise ConfigError(key_of(key), f"is only used {where}")

    only("columns", columns, preset_name == "asterisk", 'with preset = "asterisk"')
    only("usegmtime", usegmtime, preset_name == "asterisk", 'with preset = "asterisk"')
    only(
        "template",
        template_text,
        preset_name == "freeswitch-template",
        'with preset = "freeswitch-template"',
    )
    is_template = preset_name is not None and preset_name.startswith("freeswitch")
    only("broken_quotes", broken_quotes, is_template, "with the freeswitch presets")
    for opt, value in (("header", header), ("column_names", column_names)):
        only(opt, value, preset_name is None, "without a preset (presets know their columns)")
    for opt, value in (("delimiter", delimiter), ("quotechar", quotechar)):
        only(opt, value, preset_name is None, "without a preset")
    only("max_record_lines", max_record_lines, not is_template, "for RFC 4180 files")

    if columns is not None and columns not in (16, 18, 21):
        raise ConfigError(key_of("columns"), f"must be 16, 18 or 21, got {columns}")
    template: Template | None = None
    if preset_name == "freeswitch-template":
        if template_text is None:
            raise ConfigError(
                key_of("template"),
                'is required with preset = "freeswitch-template"',
                hint="copy the template text from cdr_csv.conf.xml",
            )
        try:
            template = Template.parse(template_text)
        except ValueError as exc:
            raise ConfigError(key_of("template"), str(exc)) from None

    preset = build(preset_name, columns=columns, template=template) if preset_name else None

    if header and column_names is not None:
        raise ConfigError(
            key_of("column_names"), "cannot be used with `header = true` (the header names them)"
        )
    if column_names is not None and (
        not column_names or len(set(column_names)) != len(column_names)
    ):
        raise ConfigError(key_of("column_names"), "must be a non-empty list of distinct names")
    names: tuple[str, ...] | None
    if preset is not None:
        names, what = preset.columns, f"preset {preset.name!r}"
    elif column_names is not None:
        names, what = tuple(column_names), "column_names"
    else:
        names, what = None, "the file"

    # fields
    fields: dict[str, tuple[FieldInput, ...]] = dict(preset.fields) if preset else {}
    raw_fields = special.get("fields")
    if raw_fields is not None:
        if not isinstance(raw_fields, dict):
            raise ConfigError(key_of("fields"), "must be a table: CDR field = column")
        for field_name, value in raw_fields.items():
            fkey = key_of(f"fields.{field_name}")
            if field_name not in MAPPABLE_FIELDS:
                raise ConfigError(
                    fkey,
                    "is not a CDR field that can be mapped",
                    hint=f"known: {', '.join(MAPPABLE_FIELDS)}",
                )
            refs = _colrefs(value, fkey)
            for ref in refs:
                _check_ref(ref, fkey, header=bool(header), names=names, what=what)
            fields[field_name] = tuple(FieldInput(ref) for ref in refs)
    if not any(name in fields for name in TIME_FIELDS):
        raise ConfigError(
            key_of("fields.start"),
            "is required: map the column holding the call's start time",
            hint='for example fields = { start = "calldate", duration = "duration" }',
        )

    # key
    key: tuple[ColRef, ...] = preset.key if preset else ()
    if "key" in special:
        key = _colrefs(special["key"], key_of("key"))
        for ref in key:
            _check_ref(ref, key_of("key"), header=bool(header), names=names, what=what)

    # time formats and zone
    time_formats = DEFAULT_TIME_FORMATS
    if "time_format" in special:
        raw = special["time_format"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(isinstance(f, str) for f in raw):
            raise ConfigError(key_of("time_format"), "must be a format or a list of formats")
        for fmt in raw:
            problem = check_format(fmt)
            if problem:
                raise ConfigError(
                    key_of("time_format"),
                    problem,
                    hint='e.g. "%Y-%m-%d %H:%M:%S", "epoch", "epoch_ms", "iso8601"',
                )
        time_formats = tuple(raw)
    zone_name = opts.text("timezone", None)
    zone: tzinfo | None = None if zone_name in (None, "local") else opts.timezone("timezone")
    if usegmtime:
        if zone_name is not None:
            raise ConfigError(key_of("usegmtime"), "cannot be used together with `timezone`")
        zone = UTC

    duration_unit = opts.choice("duration_unit", DURATION_UNITS, "s")
    decimal_comma = opts.flag("decimal_comma", False)

    dispositions: dict[str, Disposition] = {}
    raw_map = opts.table("disposition_map", {})
    for text, value in raw_map.items():
        dkey = key_of(f"disposition_map.{text}")
        target = value.strip().upper().replace(" ", "_") if isinstance(value, str) else None
        if target is None or target not in Disposition.__members__:
            raise ConfigError(
                dkey, f"must be one of {', '.join(Disposition.__members__)}, got {value!r:.40}"
            )
        dispositions[text.strip().upper()] = Disposition[target]

    # numbers
    country_code: str | None = None
    if "country_code" in special:
        raw_cc = special["country_code"]
        if isinstance(raw_cc, int) and not isinstance(raw_cc, bool):
            raw_cc = str(raw_cc)
        if not (
            isinstance(raw_cc, str)
            and raw_cc.lstrip("+").isdigit()
            and 1 <= len(raw_cc.lstrip("+")) <= 3
            and not raw_cc.lstrip("+").startswith("0")
        ):
            raise ConfigError(
                key_of("country_code"),
                f'must be a country calling code such as "33" or "1", got {raw_cc!r:.20}',
            )
        country_code = raw_cc.lstrip("+")
    prefixes = {}
    for pkey, default in (("international_prefix", "00"), ("national_prefix", "0")):
        value = opts.text(pkey, default)
        if value and not value.isdigit():
            raise ConfigError(key_of(pkey), f"must be digits (or empty), got {value!r:.20}")
        prefixes[pkey] = value
    trunks = frozenset(opts.text_list("trunks", []))

    encoding = opts.text("encoding", "utf-8")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(
            key_of("encoding"), f"unknown encoding {encoding!r}", hint="e.g. utf-8, latin-1"
        ) from None
    if not ascii_compatible(encoding):
        raise ConfigError(
            key_of("encoding"), f"{encoding!r} is not ASCII-compatible (UTF-16/32 are not read)"
        )

    for opt, value in (("delimiter", delimiter), ("quotechar", quotechar)):
        if value is not None and (len(value) != 1 or value in "\r\n"):
            raise ConfigError(key_of(opt), f"must be one character, got {value!r:.20}")
    if delimiter is not None and delimiter == (quotechar or '"'):
        raise ConfigError(key_of("delimiter"), "must differ from quotechar")

    spec = MappingSpec(
        fields=fields,
        key=key,
        layouts=preset.layouts if preset else ((tuple(column_names),) if column_names else ()),
        header=bool(header),
        template=preset.template if preset else None,
        delimiter=delimiter or ",",
        quotechar=quotechar or '"',
        max_record_lines=1 if is_template else (max_record_lines or 20),
        time_formats=time_formats,
        timezone=zone,
        duration_unit=duration_unit,
        dispositions=dispositions,
        country_code=country_code,
        international_prefix=prefixes["international_prefix"],
        national_prefix=prefixes["national_prefix"],
        trunks=trunks,
        encoding=encoding,
        broken_quotes=broken_quotes or "recover",
        decimal_comma=decimal_comma,
    )
    pattern = preset.pattern if preset else "*.csv"
    return MappingConfig(Mapping(spec), preset, pattern), opts


def mapping_from_options(table: MappingABC[str, Any], prefix: str = "") -> Mapping:
    """A Mapping from a table holding mapping options only (for the collector's uploads)."""
    config, opts = read_mapping(table, prefix)
    opts.finish()
    return config.mapping
