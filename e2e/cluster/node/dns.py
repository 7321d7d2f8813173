"""A one-question DNS client (A records over UDP): the readiness check that proves CoreDNS
answers through the kube-dns Service, i.e. that kube-proxy's rules and CoreDNS both work."""

from __future__ import annotations

import secrets
import socket
import struct


def _query(name: str) -> tuple[int, bytes]:
    ident = secrets.randbits(16)
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # recursion desired, 1 question
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    return ident, header + labels + b"\0" + struct.pack(">HH", 1, 1)  # type A, class IN


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:  # compression pointer: two bytes end the name
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def resolve(name: str, server: str, timeout_s: float = 1.0, port: int = 53) -> str | None:
    """The first A record of `name` from `server`, or None (no answer, error, timeout)."""
    ident, query = _query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendto(query, (server, port))
            packet = sock.recv(4096)
        except OSError:
            return None
    if len(packet) < 12:
        return None
    got_id, flags, questions, answers = struct.unpack(">HHHH", packet[:8])
    if got_id != ident or flags & 0x000F or answers == 0:
        return None
    offset = 12
    for _ in range(questions):
        offset = _skip_name(packet, offset) + 4
    for _ in range(answers):
        offset = _skip_name(packet, offset)
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", packet[offset:offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            return socket.inet_ntoa(packet[offset:offset + 4])
        offset += length
    return None
