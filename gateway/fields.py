"""The one place where the gateway reads what a client sent: JSON bodies, body fields, query parameters, ids.

Everything a client sends passes through these helpers before it reaches a protobuf field or is
re-encoded, so that hostile input is answered with a Matrix 400 here, at the edge, and never
becomes a 500 further in:

- JSON bodies are parsed once and walked once (`check_json`): nesting depth (orjson writes fewer
  levels than it reads, so a deep object that parsed would fail when re-encoded), NUL in keys (BSON
  cannot store them), and, where the content is Matrix canonical JSON, integers within +-(2^53-1)
  and no floats.
- Integers in the query are ASCII digits only (`str.isdigit()` is true for "²"), and are clamped
  or refused before they meet an int32 field.
- User ids follow the Matrix grammar (`is_user_id`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from gateway.matrix import MatrixError

# Matrix event content is canonical JSON: integers only, within this range.
CANONICAL_INT_MIN = -(2**53) + 1
CANONICAL_INT_MAX = 2**53 - 1
# Deeper than any real client's JSON, and well below orjson's write limit (254), so a body that
# passes here can always be re-encoded.
MAX_JSON_DEPTH = 64
INT32_MAX = 2**31 - 1

_ASCII_INT = re.compile(r"-?[0-9]+")
# Matrix user ids: "@" localpart ":" server_name. Localparts of historical ids may use any printable
# ASCII but ":" (the spec says servers must accept those); server_name = host [":" port], where host
# is a DNS name, an IPv4 address or a bracketed IPv6 literal. At most 255 bytes in all.
_USER_ID = re.compile(
    r"@[\x21-\x39\x3b-\x7e]+:(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
MAX_USER_ID_BYTES = 255


def bad_json(error: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", error)


def invalid_param(error: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", error)


# -- whole JSON documents ---------------------------------------------------------------------------


def check_json(value: Any, *, canonical: bool = False, where: str = "request body") -> None:
    """Refuse, with M_BAD_JSON, JSON that the gateway or a service could not re-encode or store.

    Iterative, so that the check itself has no recursion limit.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                raise bad_json(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels")
            for key, child in item.items():
                if "\x00" in key:
                    raise bad_json(f"{where} has a key containing a NUL character")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                raise bad_json(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in item)
        elif canonical and isinstance(item, float):
            raise bad_json(f"{where}: floats are not allowed in canonical JSON")
        elif (
            canonical
            and isinstance(item, int)
            and not isinstance(item, bool)
            and not CANONICAL_INT_MIN <= item <= CANONICAL_INT_MAX
        ):
            raise bad_json(f"{where}: integer out of the canonical JSON range")


def parse_json(raw: bytes | str, *, canonical: bool = False, where: str = "request body") -> Any:
    """Any JSON value, checked; M_NOT_JSON when it does not parse."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MatrixError(400, "M_NOT_JSON", f"{where} is not valid JSON") from None
    check_json(value, canonical=canonical, where=where)
    return value


def parse_json_object(raw: bytes, *, allow_empty: bool = False, canonical: bool = False) -> dict[str, Any]:
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "request body is empty; expected a JSON object")
    value = parse_json(raw, canonical=canonical)
    if not isinstance(value, dict):
        raise bad_json("request body must be a JSON object")
    return value


async def read_json_object(
    request: web.Request, *, allow_empty: bool = False, canonical: bool = False
) -> dict[str, Any]:
    """The request body as a checked JSON object, or M_NOT_JSON / M_BAD_JSON.

    Some clients send no body at all for POST /join and /logout; `allow_empty` treats that as {}.
    `canonical` is for bodies that become Matrix event content.
    """
    return parse_json_object(await request.read(), allow_empty=allow_empty, canonical=canonical)


# -- fields of a JSON object body ---------------------------------------------------------------------


def body_str(body: dict[str, Any], name: str, *, required: bool = False, max_len: int = 4096, default: str = "") -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"'{name}' is required")
        return default
    if not isinstance(value, str):
        raise bad_json(f"'{name}' must be a string")
    if len(value) > max_len:
        raise bad_json(f"'{name}' is longer than {max_len} characters")
    if required and not value:
        raise MatrixError(400, "M_MISSING_PARAM", f"'{name}' is required")
    return value


def body_bool(body: dict[str, Any], name: str, default: bool | None = None) -> bool:
    value = body.get(name, default)
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"'{name}' is required")
    if not isinstance(value, bool):
        raise bad_json(f"'{name}' must be a boolean")
    return value


def body_int(
    body: dict[str, Any], name: str, default: int, *, minimum: int = 0, maximum: int = INT32_MAX, clamp: bool = False
) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json(f"'{name}' must be an integer")
    if clamp:
        return max(minimum, min(value, maximum))
    if not minimum <= value <= maximum:
        raise bad_json(f"'{name}' must be an integer from {minimum} to {maximum}")
    return value


def body_strings(
    body: dict[str, Any], name: str, *, required: bool = False, max_items: int = 100_000, max_len: int = 4096
) -> list[str]:
    value = body.get(name)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"'{name}' is required")
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad_json(f"'{name}' must be a list of strings")
    if len(value) > max_items:
        raise bad_json(f"'{name}' has more than {max_items} items")
    if any(len(item) > max_len for item in value):
        raise bad_json(f"'{name}' has an item longer than {max_len} characters")
    return value


def body_object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_json(f"'{name}' must be an object")
    return value


def body_user_id(body: dict[str, Any], name: str = "user_id", *, required: bool = True) -> str:
    value = body_str(body, name, required=required, max_len=65536)
    if value and not is_user_id(value):
        raise invalid_param(f"'{name}' is not a Matrix user id such as @alice:example.org")
    return value


# -- query parameters ---------------------------------------------------------------------------------


def query_int(
    request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int = INT32_MAX, clamp: bool = True
) -> int:
    """An integer query parameter in ASCII digits. Out of range: clamped (limits) or refused."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not _ASCII_INT.fullmatch(raw) or (raw.startswith("-") and minimum >= 0):
        raise invalid_param(f"'{name}' must be an integer from {minimum} to {maximum}")
    # No int() of thousands of digits: anything longer than 18 is out of every range we use.
    value = int(raw) if len(raw.lstrip("-")) <= 18 else (-(10**18) if raw.startswith("-") else 10**18)
    if minimum <= value <= maximum:
        return value
    if clamp:
        return max(minimum, min(value, maximum))
    raise invalid_param(f"'{name}' must be an integer from {minimum} to {maximum}")


def query_str(request: web.Request, name: str, default: str = "", *, max_len: int = 1024) -> str:
    value = request.query.get(name, default)
    if len(value) > max_len:
        raise invalid_param(f"'{name}' is longer than {max_len} characters")
    return value


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in ("true", "false"):
        raise invalid_param(f"'{name}' must be true or false")
    return raw.lower() == "true"


# -- ids ------------------------------------------------------------------------------------------------


def is_user_id(value: str) -> bool:
    return len(value.encode()) <= MAX_USER_ID_BYTES and _USER_ID.fullmatch(value) is not None


def path_user_id(request: web.Request, name: str = "user_id") -> str:
    value = request.match_info[name]
    if not is_user_id(value):
        raise invalid_param("expected a Matrix user id such as @alice:example.org")
    return value
