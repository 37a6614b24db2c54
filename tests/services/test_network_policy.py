"""Network policy parsing and the resolver's pure parts (no kernel needed)."""

from __future__ import annotations

import struct

import pytest

from agbox.errors import InvalidRequestError
from agbox.runtime import dns
from agbox.runtime.base import NetworkPolicy
from agbox.services.network import parse_policy


def test_defaults_and_allow_list_shorthand() -> None:
    assert parse_policy(None, True) == NetworkPolicy(internet=True)
    assert parse_policy(None, False) == NetworkPolicy(internet=False)
    only = parse_policy({"allowOut": ["203.0.113.7", "Example.COM.", "*.cdn.example"]}, True)
    assert only.internet is False  # allowOut without internet: an allow-list
    assert only.allow_cidrs == ("203.0.113.7/32",)
    assert only.allow_domains == ("example.com", "*.cdn.example")
    both = parse_policy('{"internet": true, "denyOut": ["10.0.0.0/8", "ads.example"]}', False)
    assert both == NetworkPolicy(internet=True, deny_cidrs=("10.0.0.0/8",), deny_domains=("ads.example",))


@pytest.mark.parametrize(("raw", "words"), [
    ("[1]", "must be a JSON object"),
    ({"allowOut": "x y"}, "is not an IPv4 address"),
    ({"allowOut": ["fe80::/10"]}, "IPv6"),
    ({"internet": "yes"}, "true or false"),
    ({"allow": []}, "unknown fields"),
    ({"denyOut": ["1.2.3.4"] * 300}, "at most 256"),
])
def test_bad_policies_say_what_is_wrong(raw: object, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words):
        parse_policy(raw, True)


def test_name_patterns() -> None:
    assert dns.name_matches("example.com", ("example.com",))
    assert not dns.name_matches("www.example.com", ("example.com",))
    assert dns.name_matches("www.example.com", ("*.example.com",))
    assert not dns.name_matches("example.com", ("*.example.com",))
    assert not dns.name_matches("badexample.com", ("*.example.com",))


def _query(name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def test_question_parsing_and_replies() -> None:
    query = _query("WWW.Example.com", dns.TYPE_AAAA)
    name, qtype, end = dns.parse_question(query)
    assert (name, qtype, end) == ("www.example.com", dns.TYPE_AAAA, len(query))
    reply = dns.empty_reply(query, end, dns.RCODE_NXDOMAIN)
    qid, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", reply)
    assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == dns.RCODE_NXDOMAIN and (qd, an) == (1, 0)
    # An answer with a CNAME (compressed name) and two A records.
    answer = reply[:2] + struct.pack("!HHHHH", 0x8180, 1, 3, 0, 0) + reply[12:]
    answer += struct.pack("!HHHIH", 0xC00C, 5, 1, 60, 2) + b"\xc0\x0c"
    for address in (b"\xcb\x00\x71\x0a", b"\xcb\x00\x71\x0b"):
        answer += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + address
    assert dns.ipv4_answers(answer) == ["203.0.113.10", "203.0.113.11"]
    with pytest.raises(dns.DnsFormatError):
        dns.parse_question(b"\x00" * 5)
    looping = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    with pytest.raises(dns.DnsFormatError):
        dns.parse_question(looping)


def test_upstream_addresses() -> None:
    assert dns.parse_upstream("10.0.0.53") == ("10.0.0.53", 53)
    assert dns.parse_upstream(" 127.0.0.1:5353") == ("127.0.0.1", 5353)
    with pytest.raises(ValueError):
        dns.parse_upstream("dns.example")
