"""Record readers: JSON Lines, JSON arrays, CSV, gzip; bad lines become BadInput records."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antavo_braze._run.input import (
    MAX_LINE_BYTES,
    BadInput,
    _looks_like_utf16,
    _parse,
    read_records,
)
from antavo_braze.exceptions import ConfigurationError


def records(path: Path, **kwargs: str) -> list[object]:
    """Every record read from ``path``."""
    return list(read_records(path, **kwargs))


def test_jsonl_with_blank_lines_bom_and_line_numbers(tmp_path: Path) -> None:
    """JSONL: a BOM is dropped, blank lines skipped, each record knows its line."""
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n\n\n{"id": "b"}\n  \n{"id": "c"}\n')
    source = read_records(path)
    assert list(source) == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert [source.line_of(i) for i in range(3)] == [1, 4, 6]


def test_bad_lines_fail_alone_with_their_line(tmp_path: Path) -> None:
    """Broken JSON, a non-object, bad UTF-8 and deep nesting each become one BadInput."""
    path = tmp_path / "m.jsonl"
    lines = [
        b'{"id": "a"}',
        b'{"id": ',
        b"[1, 2]",
        b'{"id": "caf\xe9"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "b"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = records(path)
    assert got[0] == {"id": "a"}
    assert got[-1] == {"id": "b"}
    bad = got[1:-1]
    assert all(isinstance(b, BadInput) for b in bad)
    assert [b.line for b in bad] == [2, 3, 4, 5]  # type: ignore[attr-defined]
    reasons = [b.reason for b in bad]  # type: ignore[attr-defined]
    assert reasons[0].startswith("not valid JSON (")
    assert reasons[1] == "expected a JSON object, got list"
    assert "not valid utf-8 (byte 12)" in reasons[2]
    assert reasons[3] == "nested too deeply to be a record"


def test_latin1_needs_its_encoding(tmp_path: Path) -> None:
    """A Latin-1 file read as UTF-8 fails its line; with encoding='latin-1' it reads."""
    path = tmp_path / "m.jsonl"
    path.write_bytes('{"id": "a", "city": "Győr Zürich"}\n'.encode("latin-1", "replace"))
    assert isinstance(records(path)[0], BadInput)
    assert records(path, encoding="latin-1") == [{"id": "a", "city": "Gy?r Zürich"}]


def test_an_overlong_line_is_one_bad_record(tmp_path: Path) -> None:
    """A line over MAX_LINE_BYTES is cut and skipped; the next line still reads."""
    path = tmp_path / "m.jsonl"
    with path.open("wb") as out:
        out.write(b'{"id": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
        out.write(b'{"id": "b"}\n')
    got = records(path)
    assert isinstance(got[0], BadInput)
    assert "longer than" in got[0].reason
    assert got[1] == {"id": "b"}


def test_gzipped_jsonl_and_json_array(tmp_path: Path) -> None:
    """.jsonl.gz and .json.gz read like the plain files."""
    lines = tmp_path / "m.jsonl.gz"
    with gzip.open(lines, "wt") as out:
        out.write('{"id": "a"}\n{"id": "b"}\n')
    assert records(lines) == [{"id": "a"}, {"id": "b"}]
    array = tmp_path / "m.json.gz"
    with gzip.open(array, "wt") as out:
        json.dump([{"id": "a"}], out)
    assert records(array) == [{"id": "a"}]


def test_json_array_streams_across_chunks(tmp_path: Path) -> None:
    """A JSON array larger than one read chunk yields every element, with its line."""
    path = tmp_path / "m.json"
    rows = [{"id": f"m{i}", "pad": "x" * 50} for i in range(3000)]
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    source = read_records(path)
    assert list(source) == rows
    assert source.line_of(0) == 2
    assert source.line_of(2999) == 3001


def test_json_array_problems(tmp_path: Path) -> None:
    """A non-object element fails alone; a cut-off array and bad JSON end with a BadInput."""
    mixed = tmp_path / "mixed.json"
    mixed.write_text('[{"id": "a"}, 3, {"id": "b"}]')
    got = records(mixed)
    assert got[0] == {"id": "a"}
    assert got[2] == {"id": "b"}
    assert isinstance(got[1], BadInput)
    assert got[1].reason == "expected a JSON object, got int"
    cut = tmp_path / "cut.json"
    cut.write_text('[{"id": "a"}, {"id": "b"')
    got = records(cut)
    assert got[0] == {"id": "a"}
    assert isinstance(got[-1], BadInput)
    assert "not valid JSON" in got[-1].reason
    unclosed = tmp_path / "unclosed.json"
    unclosed.write_text('[{"id": "a"}')
    got = records(unclosed)
    assert isinstance(got[-1], BadInput)
    assert "not closed" in got[-1].reason
    bad_bytes = tmp_path / "bytes.json"
    bad_bytes.write_bytes(b'[{"id": "\xff"}]')
    assert isinstance(records(bad_bytes)[0], BadInput)


def test_json_file_of_lines_reads_as_jsonl(tmp_path: Path) -> None:
    """A .json file holding one object per line is read line by line."""
    path = tmp_path / "m.json"
    path.write_text('{"id": "a"}\n{"id": "b"}\n')
    assert records(path) == [{"id": "a"}, {"id": "b"}]


def test_csv_from_excel_bom_and_semicolons(tmp_path: Path) -> None:
    """Excel's BOM is dropped and ';' is sniffed; JSON cells and data.x columns are parsed."""
    path = tmp_path / "m.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid;tags;data.points;note\r\n"
        b'a;["x","y"];10;\r\n;;;\r\nb;{"k": 1};;"two\r\nlines"\r\n'
    )
    source = read_records(path)
    got = list(source)
    assert got == [
        {"id": "a", "tags": ["x", "y"], "data": {"points": "10"}},
        {"id": "b", "tags": {"k": 1}, "note": "two\r\nlines"},
    ]
    assert [source.line_of(0), source.line_of(1)] == [2, 4]


def test_csv_rows_that_fail(tmp_path: Path) -> None:
    """Too many cells, a broken JSON cell and undecodable bytes each fail their row only."""
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,tags\na,[1\nb,1,2\nc,caf\xe9\nd,ok\n")
    got = records(path, delimiter=",")
    assert got[-1] == {"id": "d", "tags": "ok"}
    reasons = [g.reason for g in got[:-1]]  # type: ignore[attr-defined]
    assert reasons == [
        "column 'tags' starts like JSON but is not JSON",
        "the row has 3 cells, the header 2",
        "column 'tags': bytes that are not valid utf-8 (a Latin-1 / Windows-1252 export? "
        "pass --encoding cp1252 (encoding='cp1252'))",
    ]
    assert records(path, delimiter=",", encoding="latin-1")[2] == {"id": "c", "tags": "café"}


def test_tsv_and_format_override(tmp_path: Path) -> None:
    """.tsv splits on tabs; format= reads a file whatever its suffix."""
    tsv = tmp_path / "m.tsv"
    tsv.write_text("id\tscore\na\t1\n")
    assert records(tsv) == [{"id": "a", "score": "1"}]
    odd = tmp_path / "m.jsonl"
    odd.write_text("id,score\na,1\n")
    assert records(odd, format="csv") == [{"id": "a", "score": "1"}]


def test_a_huge_csv_line_stays_bounded(tmp_path: Path) -> None:
    """A CSV line far over csv's field limit fails as bad rows; the next row reads."""
    path = tmp_path / "m.csv"
    path.write_text("id,note\n" + "a," + "x" * 300_000 + "\nb,ok\n")
    got = records(path)
    assert isinstance(got[0], BadInput)
    assert "field larger than field limit" in got[0].reason
    assert got[-1] == {"id": "b", "note": "ok"}


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("nope.jsonl", {}, "input file not found"),
        ("m.txt", {}, "unsupported input 'm.txt'"),
        ("m.jsonl", {"encoding": "klingon"}, "unknown encoding 'klingon'"),
        ("m.jsonl", {"format": "xml"}, "unknown input format 'xml'"),
    ],
)
def test_configuration_mistakes(
    tmp_path: Path, name: str, kwargs: dict[str, str], message: str
) -> None:
    """A missing file, an unknown suffix, encoding or format is a ConfigurationError."""
    (tmp_path / "m.txt").write_text("x")
    (tmp_path / "m.jsonl").write_text("{}")
    with pytest.raises(ConfigurationError, match=message):
        read_records(tmp_path / name, **kwargs)


@settings(max_examples=60, deadline=None)
@given(blanks=st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_line_of_matches_the_file(
    tmp_path_factory: pytest.TempPathFactory, blanks: list[int]
) -> None:
    """For any pattern of blank lines, line_of gives each record's real line."""
    lines: list[str] = []
    expected: list[int] = []
    for i, gap in enumerate(blanks):
        lines.extend([""] * gap)
        lines.append(json.dumps({"id": f"m{i}"}))
        expected.append(len(lines))
    path = tmp_path_factory.mktemp("lines") / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    source = read_records(path)
    assert len(list(source)) == len(blanks)
    assert [source.line_of(i) for i in range(len(blanks))] == expected


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


def _read_line(data: bytes) -> object:
    """What read_records makes of a JSON Lines file holding the one line ``data``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "line.jsonl"
        path.write_bytes(data + b"\n")
        return list(read_records(path))


@settings(max_examples=200, deadline=None)
@given(record=st.dictionaries(st.text(max_size=4), _JSON_VALUES, max_size=4))
def test_a_line_reads_as_the_standard_parser_reads_it(record: dict[str, object]) -> None:
    """A line reads exactly as json.loads reads it, NaN and huge numbers included (a guard for
    the faster parser: orjson reads integers beyond 64 bits as floats)."""
    text = json.dumps(record)
    assert repr(_parse(text, 1)) == repr(json.loads(text))
    assert repr(_read_line(text.encode())) == repr([json.loads(text)])


@pytest.mark.parametrize(
    "line",
    [
        '{"id": "a", "n": 18446744073709551616}',  # past 64 bits
        '{"id": "a", "n": -9223372036854775809}',  # 19 digits, past 64 bits
        '{"id": "a", "n": 9999999999999999999}',  # 19 digits, within 64 bits
        '{"id": "a", "n": 123456789012345678901234567890}',
        '{"id": "a", "x": 3.14159265358979323846264}',
        '{"id": "a", "n": NaN, "m": -Infinity, "big": 1e400}',
        '{"id": "a", "s": "\\ud800 lone"}',
        '{"id": "a", "dup": 1, "dup": 2}',
        '{"id": "ü", "nested": {"deep": [[[{"k": [1, 2.5, null, true]}]]]}}',
    ],
)
def test_lines_that_parsers_read_differently_read_as_json_reads_them(line: str) -> None:
    """Numbers past 64 bits, NaN, lone surrogates, duplicate keys: exactly as json.loads reads
    them, whichever parser the SDK uses (orjson reads the first as floats and refuses the rest)."""
    assert repr(_read_line(line.encode())) == repr([json.loads(line)])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"id": "a",}', "not valid JSON"),
        (b'{"id": "\xff"}', "not valid utf-8"),
        (b'["a"]', "expected a JSON object, got list"),
    ],
)
def test_lines_no_parser_takes_keep_their_reasons(data: bytes, reason: str) -> None:
    """A line that is not a record is one BadInput with the standard reason, whichever parser
    the SDK uses."""
    (bad,) = _read_line(data)
    assert isinstance(bad, BadInput)
    assert reason in bad.reason, bad


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_json_lines_in_a_wide_encoding_read_line_by_line(tmp_path: Path, encoding: str) -> None:
    """JSON Lines in UTF-16 or UTF-32 (whose line end is not the byte \\n) read as their text
    splits, each record on its own line; a line that does not decode fails alone."""
    path = tmp_path / "m.jsonl"
    plain = encoding if encoding.endswith(("le", "be")) else f"{encoding}-le"  # no second BOM
    bad = "\ud800".encode(plain, "surrogatepass")  # a lone surrogate: not valid text
    path.write_bytes(
        '{"id": "a", "name": "Zoë 😀"}\n\n{"id": "b"}\n'.encode(encoding)
        + '{"id": "'.encode(plain)
        + bad
        + '"}\n{"id": "c"}\n'.encode(plain)
    )
    source = read_records(path, encoding=encoding)
    found = list(source)
    assert found[:2] == [{"id": "a", "name": "Zoë 😀"}, {"id": "b"}]
    assert [source.line_of(i) for i in range(2)] == [1, 3]
    assert isinstance(found[2], BadInput), found
    assert f"not valid {encoding} (character 9)" in found[2].reason, found[2]
    assert found[3:] == [{"id": "c"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_in_utf16_read_as_utf8_is_one_clear_error(tmp_path: Path, suffix: str) -> None:
    """A UTF-16 JSON Lines or JSON file read as UTF-8 is one error naming the fix, not a
    failure per line; with the encoding it reads (a JSON array too)."""
    path = tmp_path / f"m{suffix}"
    text = '[{"id": "a"}, {"id": "b"}]' if suffix == ".json" else '{"id": "a"}\n{"id": "b"}\n'
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(ConfigurationError) as caught:
        records(path)
    assert "--encoding utf-16" in str(caught.value)
    assert records(path, encoding="utf-16") == [{"id": "a"}, {"id": "b"}]


@pytest.mark.parametrize(
    ("encoding", "written"), [("utf-16", "utf-16-le"), ("utf-32", "utf-32-be")]
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_utf16_or_32_without_a_byte_order_mark_names_the_byte_order(
    tmp_path: Path, encoding: str, written: str, suffix: str
) -> None:
    """--encoding utf-16 (or utf-32) on a file without the byte-order mark that encoding needs
    is one clear error naming -le / -be, not a traceback; with the byte order it reads."""
    path = tmp_path / f"m{suffix}"
    text = {".jsonl": '{"id": "a"}\n', ".json": '[{"id": "a"}]', ".csv": "id\na\n"}[suffix]
    path.write_bytes(text.encode(written))
    with pytest.raises(ConfigurationError) as caught:
        records(path, encoding=encoding)
    assert f"--encoding {encoding}-le or {encoding}-be" in str(caught.value)
    assert records(path, encoding=written) == [{"id": "a"}]


def test_utf32_read_as_utf8_names_utf32() -> None:
    """A UTF-32 file read as UTF-8 is told apart from UTF-16: the fix names utf-32."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        path.write_bytes('{"id": "a"}\n'.encode("utf-32"))
        with pytest.raises(ConfigurationError) as caught:
            records(path)
    assert "--encoding utf-32" in str(caught.value)


def test_a_record_nested_past_what_json_reads_is_one_bad_line() -> None:
    """A line nested about 1,000 deep (orjson reads it, json runs out of recursion) is a bad
    input line whichever parser the SDK uses, not a record for one and a failure for the
    other."""
    line = '{"id": "a", "deep": ' + "[" * 1000 + "]" * 1000 + "}"
    (found,) = _read_line(line.encode())
    assert isinstance(found, BadInput), found
    assert "nested too deeply" in found.reason


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_a_utf16_csv_read_as_utf8_is_one_clear_error(tmp_path: Path, encoding: str) -> None:
    """A UTF-16 CSV (with or without its mark) read as UTF-8: one error naming --encoding."""
    path = tmp_path / "m.csv"
    path.write_bytes("id,score\na,1\nb,2\n".encode(encoding))
    with pytest.raises(ConfigurationError, match="looks like UTF-16") as caught:
        read_records(path)
    assert "--encoding utf-16" in str(caught.value)
    assert records(path, encoding=encoding) == [
        {"id": "a", "score": "1"},
        {"id": "b", "score": "2"},
    ]


@given(st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=200))
def test_utf16_is_told_from_utf8_ascii(text: str) -> None:
    """ASCII text in UTF-16 (with or without its mark) is seen as UTF-16; in UTF-8 it is not."""
    assert _looks_like_utf16(text.encode("utf-16"))
    assert _looks_like_utf16(text.encode("utf-16-le"))
    assert not _looks_like_utf16(text.encode("utf-8"))
