"""The one way agbox parses JSON that came from outside (request bodies, query values, WebSocket
frames, tool arguments, labels, policies): bounded in size and nesting, finite numbers only, and
strings that are valid Unicode. Anything else is an ``InvalidRequestError`` with a clear message,
never a ``RecursionError``, an ``OverflowError`` deep in a service or a ``UnicodeEncodeError`` in
the store.

Also home of the small helpers that keep untrusted text out of trouble elsewhere: ``clip`` (echo
at most a bounded piece of client input in an error message) and ``same_secret`` (constant-time
comparison that accepts any text, also non-ASCII).
"""

from __future__ import annotations

import hmac
import json
import math
import re
from typing import Any

from agbox.errors import InvalidRequestError

MAX_DEPTH = 64
# Lone UTF-16 surrogates cannot be encoded as UTF-8 (SQLite, logs, the agent's pipe would fail).
_SURROGATE = re.compile("[\ud800-\udfff]")
ECHO_LIMIT = 200


def clip(value: Any, limit: int = ECHO_LIMIT) -> str:
    """Client input as it may appear inside an error message: printable, at most ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = _SURROGATE.sub("\ufffd", text)
    if len(text) > limit:
        return f"{text[:limit]}… ({len(text)} characters)"
    return text


_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
                   float: "a number", type(None): "null"}


def json_type(value: Any) -> str:
    """What a decoded JSON value is, in JSON words ("an object", "null"), for error messages."""
    return _JSON_TYPE_NAMES.get(type(value), "a value of another kind")


def same_secret(given: Any, expected: str | bytes) -> bool:
    """Constant-time equality of a presented secret (text or bytes) and the real one; anything else, and
    any text (non-ASCII, lone surrogates), is simply unequal, never an exception. The only place agbox
    compares secrets (ruff bans ``compare_digest`` elsewhere: a str with non-ASCII raises TypeError)."""
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogatepass")
    if not isinstance(given, bytes) or not given:
        return False
    wanted = expected.encode("utf-8", "surrogatepass") if isinstance(expected, str) else expected
    return hmac.compare_digest(given, wanted)


def _reject_constant(name: str) -> Any:
    raise InvalidRequestError(f"{name} is not a valid JSON number (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequestError(f"number {clip(text, 40)} is out of range")
    return value


def check_text(value: str, what: str) -> str:
    # isascii() is O(1) in CPython, so large ASCII payloads (base64 file contents) cost nothing here.
    if not value.isascii() and _SURROGATE.search(value):
        raise InvalidRequestError(f"{what} contains an unpaired UTF-16 surrogate (not valid Unicode)")
    return value


def check_value(value: Any, what: str = "JSON value", max_depth: int = MAX_DEPTH) -> Any:
    """Walk a decoded value without recursion: depth, finite numbers, valid strings."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, what)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequestError(f"{what} contains a non-finite number")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise InvalidRequestError(f"{what} is nested too deeply (at most {max_depth} levels)")
            if isinstance(item, dict):
                for key, child in item.items():
                    check_text(key, what)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
    return value


def loads(raw: str | bytes | bytearray, what: str = "JSON", *, max_bytes: int | None = None,
          max_depth: int = MAX_DEPTH) -> Any:
    """Decode untrusted JSON text, or raise InvalidRequestError naming ``what``."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise InvalidRequestError(f"{what} is too large ({len(raw)} bytes, at most {max_bytes})")
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidRequestError(f"{what} is nested too deeply (at most {max_depth} levels)") from None
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{what}: {exc.message}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{what} is not valid JSON: {clip(str(exc), 120)}") from None
    return check_value(value, what, max_depth)
