"""A minimal rtnetlink client: the handful of link, address and route requests a sandbox network needs.

Done in-process because each ``ip`` exec costs about 2 ms, which alone would exceed the budget for
networking on a sandbox start. A socket is bound to the network namespace of the thread that made it,
so one socket per namespace is enough and the thread may move on afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 20, 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFLA_IFNAME, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 3, 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY, RTA_OIF = 5, 4
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst len, src len, tos, table, protocol, scope, type, flags
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


class Netlink:
    """One NETLINK_ROUTE socket, in the network namespace of the thread that opened it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _request(self, kind: int, flags: int, body: bytes) -> None:
        self._seq += 1
        message = _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0) + body
        self._sock.send(message)
        while True:
            reply = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSG.size <= len(reply):
                length, rtype, _flags, seq, _port = _NLMSG.unpack_from(reply, offset)
                if rtype == NLMSG_ERROR and seq == self._seq:
                    (error,) = struct.unpack_from("=i", reply, offset + _NLMSG.size)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return
                offset += max((length + 3) & ~3, _NLMSG.size)

    def add_veth(self, name: str, peer_name: str, peer_netns_fd: int) -> None:
        """A veth pair: ``name`` here (down), ``peer_name`` created directly in the namespace of the fd."""
        peer = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(peer_name)) \
            + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        linkinfo = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name)) \
            + _attr(IFLA_LINKINFO, linkinfo)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def set_link(self, name: str, up: bool | None = None, alias: str | None = None) -> None:
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, flags, change) + _attr(IFLA_IFNAME, _name(name))
        if alias is not None:
            body += _attr(IFLA_IFALIAS, alias.encode())
        self._request(RTM_NEWLINK, 0, body)

    def delete_link(self, name: str) -> None:
        self._request(RTM_DELLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name)))

    def add_address(self, index: int, interface: ipaddress.IPv4Interface) -> None:
        packed = interface.ip.packed
        body = _IFADDR.pack(socket.AF_INET, interface.network.prefixlen, 0, 0, index) \
            + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def add_default_route(self, gateway: ipaddress.IPv4Address, index: int) -> None:
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0) \
            + _attr(RTA_GATEWAY, gateway.packed) + _attr(RTA_OIF, struct.pack("=i", index))
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)
