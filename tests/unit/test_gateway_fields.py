"""The gateway's one set of request-field helpers (gateway/fields.py): what they let through and what they refuse."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.fields import (
    INT32_MAX,
    MAX_JSON_DEPTH,
    body_int,
    body_user_id,
    check_json,
    is_user_id,
    parse_json_object,
    query_bool,
    query_int,
)
from gateway.matrix import MatrixError

pytestmark = pytest.mark.unit


def deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def query(value: str) -> object:
    return make_mocked_request("GET", f"/x?limit={quote(value)}")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("7", 7), ("0", 0), ("", 5), ("4294967296", 1000), ("99999999999999999999", 1000), ("9" * 5000, 1000)],
)
def test_query_int_reads_ascii_digits_and_clamps(raw: str, expected: int) -> None:
    assert query_int(query(raw), "limit", 5, maximum=1000) == expected


@pytest.mark.parametrize("raw", ["²", "٣", "-1", "1.5", "1e3", " 5", "0x10", "+5", "5\u0000"])
def test_query_int_refuses_anything_else(raw: str) -> None:
    with pytest.raises(MatrixError) as caught:
        query_int(query(raw), "limit", 5, maximum=1000)
    assert (caught.value.status, caught.value.errcode) == (400, "M_INVALID_PARAM")


def test_query_int_without_clamp_refuses_out_of_range() -> None:
    with pytest.raises(MatrixError):
        query_int(query("2147483648"), "limit", 0, clamp=False)
    assert query_int(query(str(INT32_MAX)), "limit", 0, clamp=False) == INT32_MAX


def test_query_bool() -> None:
    assert query_bool(make_mocked_request("GET", "/x?b=TRUE"), "b") is True
    assert query_bool(make_mocked_request("GET", "/x"), "b") is False
    with pytest.raises(MatrixError):
        query_bool(make_mocked_request("GET", "/x?b=yes"), "b")


def test_check_json_depth_nul_keys_and_canonical_numbers() -> None:
    check_json(deep(MAX_JSON_DEPTH))
    for bad in (deep(MAX_JSON_DEPTH + 1), deep(300), {"a\u0000": 1}, [[{"x": {"\u0000": 1}}]]):
        with pytest.raises(MatrixError) as caught:
            check_json(bad)
        assert caught.value.errcode == "M_BAD_JSON"
    check_json({"f": 1.5, "n": 2**60})  # fine where the content is not canonical
    for bad in ({"f": 1.5}, {"n": 2**53}, {"n": -(2**53)}):
        with pytest.raises(MatrixError):
            check_json(bad, canonical=True)
    check_json({"n": 2**53 - 1, "b": True, "z": None}, canonical=True)


def test_parse_json_object() -> None:
    assert parse_json_object(b"  ", allow_empty=True) == {}
    for raw, errcode in [
        (b"", "M_NOT_JSON"),
        (b"{", "M_NOT_JSON"),
        (b"[1]", "M_BAD_JSON"),
        (b'{"a": 1e400}', "M_NOT_JSON"),
        (b'{"s": "\\ud800"}', "M_NOT_JSON"),
        (b'{"a":' * 300 + b"1" + b"}" * 300, "M_BAD_JSON"),
    ]:
        with pytest.raises(MatrixError) as caught:
            parse_json_object(raw)
        assert caught.value.errcode == errcode, raw[:20]


@pytest.mark.parametrize(
    "user_id",
    ["@alice:example.org", "@a:localhost:8008", "@x=y/z+q.-_:1.2.3.4", "@a:[::1]:8448", "@Historic!#:example.org"],
)
def test_user_ids_of_the_matrix_grammar(user_id: str) -> None:
    assert is_user_id(user_id)


@pytest.mark.parametrize(
    "user_id",
    [
        "@用:localhost",
        "@a:b/../c",
        "alice",
        "@:x",
        "@a:",
        "@a:b:c:d",
        "@a b:x",
        "@a:-x",
        "@a:x-",
        "@a\u0000:x",
        "@" + "a" * 250 + ":example.org",
        "@a:x:123456",
    ],
)
def test_other_user_ids_are_refused(user_id: str) -> None:
    assert not is_user_id(user_id)
    with pytest.raises(MatrixError) as caught:
        body_user_id({"user_id": user_id})
    assert caught.value.errcode == "M_INVALID_PARAM"


def test_body_int() -> None:
    assert body_int({}, "n", 3) == 3
    assert body_int({"n": 500_000}, "n", 0, maximum=120_000, clamp=True) == 120_000
    for bad in (True, 1.0, "1", 2**31, -1):
        with pytest.raises(MatrixError):
            body_int({"n": bad}, "n", 0)
