"""Record splitting (RFC 4180 and templates) without any file."""

from __future__ import annotations

import pytest
from cdrstats_csv.records import RecordError, Template, split_csv, split_records


def datas(buf: bytes, **kw: object) -> list[bytes]:
    return [r.data for r in split_records(buf, **kw).records]  # type: ignore[arg-type]


def test_partial_last_line_waits_unless_final() -> None:
    split = split_records(b"a,b\nc,d\ne,f")
    assert [r.data for r in split.records] == [b"a,b", b"c,d"]
    assert split.consumed == 8 and split.lines == 2
    assert datas(b"a,b\nc,d\ne,f", final=True) == [b"a,b", b"c,d", b"e,f"]


def test_crlf_and_blank_lines() -> None:
    split = split_records(b"a,b\r\n\r\n  \nc,d\r\n")
    assert [(r.data, r.line) for r in split.records] == [(b"a,b", 1), (b"c,d", 4)]
    assert split.consumed == len(b"a,b\r\n\r\n  \nc,d\r\n") and split.lines == 4


def test_quoted_newline_joins_lines_and_counts_them() -> None:
    split = split_records(b'1,"x\ny\nz",2\n3,"w",4\n')
    assert [(r.data, r.line, r.lines) for r in split.records] == [
        (b'1,"x\ny\nz",2', 1, 3),
        (b'3,"w",4', 4, 1),
    ]


def test_open_quote_at_end_waits_and_says_so() -> None:
    split = split_records(b'1,"x\n2,y\n')
    assert split.records == [] and split.consumed == 0 and split.open_quote
    # With no new data the caller gives up on the quote: the first line alone, then the rest.
    flushed = split_records(b'1,"x\n2,y\n', flush_open_quotes=True)
    assert [r.data for r in flushed.records] == [b'1,"x', b"2,y"]
    assert not flushed.open_quote


def test_open_quote_never_closing_within_max_lines() -> None:
    buf = b'1,"broken\n' + b"".join(b"%d,ok\n" % i for i in range(5))
    got = datas(buf, max_lines=3)
    assert got[0] == b'1,"broken' and got[1:] == [b"%d,ok" % i for i in range(5)]


def test_joined_record_refused_by_accept_is_cut_at_first_line() -> None:
    buf = b'1,"a\n2,b\n3,c"\n'
    assert datas(buf) == [b'1,"a\n2,b\n3,c"']
    cut = datas(buf, final=True, accept=lambda data: data.count(b",") == 1)
    assert cut == [b'1,"a', b"2,b", b'3,c"']


def test_single_line_mode_ignores_quotes_and_limit_bounds_records() -> None:
    assert datas(b'"a\n"b\n', quote=None) == [b'"a', b'"b']
    split = split_records(b"1\n2\n3\n", limit=2)
    assert [r.data for r in split.records] == [b"1", b"2"] and split.consumed == 4


def test_split_csv_doubled_quotes_and_errors() -> None:
    assert split_csv('"a ""b""",,"",7') == ['a "b"', "", "", "7"]
    assert split_csv("x;y", delimiter=";") == ["x", "y"]
    with pytest.raises(RecordError, match="malformed CSV"):
        split_csv('"a"b,c')
    with pytest.raises(RecordError, match="malformed CSV"):
        split_csv('"open')


def test_template_parse() -> None:
    template = Template.parse('"${a}","${b}", "${c}"\n')
    assert template.names == ("a", "b", "c")
    assert template.literals == ('"', '","', '", "', '"')
    assert template.text == '"${a}","${b}", "${c}"'
    nested = Template.parse('"${regex(\'${x}\'|^.)}","${y}"')
    assert nested.names == ("regex('${x}'|^.)", "y")
    sql = Template.parse('INSERT INTO cdr VALUES ("${a}","${b}");')
    assert sql.literals[0] == 'INSERT INTO cdr VALUES ("' and sql.literals[-1] == '");'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no variables", "has no ${variable}"),
        ("${a}${b}", "nothing between them"),
        ('"${a}","${b', "unclosed"),
        ('"${}"', "empty"),
        ('"${a}"\n"${b}"', "one line"),
    ],
)
def test_template_parse_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("$", r"\$").replace("{", r"\{")):
        Template.parse(text)


def test_template_split_recovers_quotes_when_unambiguous() -> None:
    template = Template.parse('"${a}","${b}","${c}"')
    assert template.split('"x","y","z"') == ["x", "y", "z"]
    assert template.split('"John "Boss" Doe","y",""') == ['John "Boss" Doe', "y", ""]
    assert template.split('"ends with quote"","y","z"') == ['ends with quote"', "y", "z"]
    assert template.split('"a, b","","z"') == ["a, b", "", "z"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('"a","b"', "no '\",\"' after field 2 (b) of 3"),
        ('"a","b","c","d"', "a value contains a separator"),
        ('"a",","b","c"', "a value contains a separator"),
        ("a,b,c", "expected the line to start with"),
        ('"', "expected the line to start with"),
    ],
)
def test_template_split_errors(line: str, problem: str) -> None:
    template = Template.parse('"${a}","${b}","${c}"')
    with pytest.raises(RecordError) as caught:
        template.split(line)
    assert problem in str(caught.value)
