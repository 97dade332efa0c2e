"""Which addresses a membership node will talk to, and whether two addresses are the same.

SWIM members send to the addresses named in each other's signed records, so a forged record
could aim traffic anywhere. These pure helpers hold the rules :mod:`.membership` (and its UDP
driver, for seeds) applies: a member's host must be an IP literal in the node's own scope
(same IP version, loopback exactly when the node is, never unspecified, multicast, reserved
or IPv4-mapped), and a packet from a stranger counts only if it came from the address its
record names, IP literals compared by value.
"""

from __future__ import annotations

import ipaddress

from zmqcomm.patterns.discovery.membership_wire import Address


def same_address(sender: object, address: Address) -> bool:
    """Whether the transport address ``sender`` is ``address`` (IP literals compared by
    value, so ``::1`` matches ``0:0:0:0:0:0:0:1``)."""
    if not isinstance(sender, tuple) or len(sender) != 2:
        return False
    return sender[1] == address[1] and _host_key(sender[0]) == _host_key(address[0])


#: IP version and whether it is loopback; None for a host that is not an IP literal.
Scope = tuple[int, bool] | None


def scope_of(host: str) -> Scope:
    """The node's own scope: IP version and whether it is loopback; None when its host is
    not an IP literal (a name, in a simulation), which then restricts only the family."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (ip.version, ip.is_loopback)


def in_scope(host: str, scope: Scope) -> bool:
    """Whether a node at ``scope`` may send to a member at ``host``: an IP literal that is
    neither unspecified, multicast, reserved nor IPv4-mapped, of the same version, loopback
    iff the node is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_unspecified or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved:  # 240/4, the broadcast
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return False  # ::ffff:127.0.0.1 is loopback in disguise
    if scope is None:
        return True
    version, loopback = scope
    return ip.version == version and ip.is_loopback == loopback


def _host_key(host: object) -> object:
    try:
        return ipaddress.ip_address(str(host))
    except ValueError:  # not an IP literal (simulated nodes may use names): compare as is
        return host
