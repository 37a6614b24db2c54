"""Session network policies: parsing what a client sends (``networkPolicy`` beside the official fields)
into a validated ``NetworkPolicy``, with the server default for whatever it leaves out."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.runtime.base import NetworkPolicy

MAX_ENTRIES = 256
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _domain(entry: str) -> str | None:
    """The normalized domain pattern (``name`` or ``*.name``), or None if ``entry`` is not one."""
    name = entry.strip().lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    labels = bare.split(".")
    if len(bare) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None
    return name


def _entries(raw: Any, field: str, domains_allowed: bool = True) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(CIDRs, domain patterns) of one list."""
    if raw is None:
        return (), ()
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise InvalidRequestError(f"networkPolicy.{field} must be a list of CIDRs, addresses or domain names")
    if len(raw) > MAX_ENTRIES:
        raise InvalidRequestError(f"networkPolicy.{field} has {len(raw)} entries (at most {MAX_ENTRIES})")
    cidrs: list[str] = []
    domains: list[str] = []
    for item in raw:
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            domain = _domain(item)
            if domain is None or not domains_allowed:
                raise InvalidRequestError(f"networkPolicy.{field}: {item!r} is not an IPv4 address, CIDR or "
                                          "domain name (example.com, *.example.com)") from None
            domains.append(domain)
            continue
        if network.version != 4:
            raise InvalidRequestError(f"networkPolicy.{field}: {item!r} is IPv6; sandboxes have IPv4 only")
        cidrs.append(str(network))
    return tuple(dict.fromkeys(cidrs)), tuple(dict.fromkeys(domains))


def parse_policy(raw: Any, default_internet: bool) -> NetworkPolicy:
    """``raw``: None, a JSON object or its text, with ``internet`` (bool), ``allowOut``, ``denyOut``.
    ``internet`` left out means: off when ``allowOut`` is given (an allow-list), else the server default."""
    if raw is None or raw == "":
        return NetworkPolicy(internet=default_internet)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequestError("networkPolicy must be a JSON object") from exc
    if not isinstance(raw, dict):
        raise InvalidRequestError("networkPolicy must be a JSON object")
    unknown = set(raw) - {"internet", "allowOut", "denyOut", "allow_out", "deny_out"}
    if unknown:
        raise InvalidRequestError(f"networkPolicy has unknown fields: {', '.join(sorted(unknown))}")
    allow_cidrs, allow_domains = _entries(raw.get("allowOut", raw.get("allow_out")), "allowOut")
    deny_cidrs, deny_domains = _entries(raw.get("denyOut", raw.get("deny_out")), "denyOut")
    internet = raw.get("internet")
    if internet is None:
        internet = default_internet and not (allow_cidrs or allow_domains)
    if not isinstance(internet, bool):
        raise InvalidRequestError("networkPolicy.internet must be true or false")
    return NetworkPolicy(internet=internet, allow_cidrs=allow_cidrs, deny_cidrs=deny_cidrs,
                         allow_domains=allow_domains, deny_domains=deny_domains)
