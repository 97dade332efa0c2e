"""What a :class:`~zmqcomm.patterns.gossip.driver.GossipAgent` knows of its peers: whose word
it takes, and where a discovered one is dialed (:func:`tcp_endpoint`).

An agent knows its peers' keys one of two ways: a fixed ``verify_keys`` mapping (agent id ->
Ed25519 verify key) or a :class:`~zmqcomm.crypto.trust.TrustStore`. Either way, every Publish
is signed by its origin and verified, through the machine's ``verify`` callback
(:func:`mapping_verifier` or :func:`trust_verifier`), before it is delivered or relayed.

Signed-only, routing ids are *not* identities, so the sender of a frame only names whom to
blame. Control items that make us send to a peer or keep track of it (Graft, IHave, IWant,
Adopt, and Prune, which would make us ask others to adopt us) are taken only from a sender
:meth:`PeerTrust.trusted` knows (in ``verify_keys``, or trusted and not revoked in the trust
store); from any other id the agent drops them, counted ``untrusted_control`` and audited, so
a stranger cannot join the mesh and read the traffic.
A peer revoked (or expired) after it joined is found by :meth:`PeerTrust.untrusted` on each
heartbeat and dropped.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from typing import Any

from zmqcomm.crypto.keys import signature_valid
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import SecurityError, UsageError
from zmqcomm.patterns.discovery.peers import PeerEvent
from zmqcomm.patterns.gossip.machine import Verifier


def trust_verifier(trust: TrustStore) -> Verifier:
    """A ``verify`` callback over a trust store, asked on every message: a revoked origin is
    refused on its next message (:meth:`TrustStore.lookup` throttles its own ``stat`` calls,
    so no cache of ours may outlive a revocation)."""

    def verify(origin: Any, material: bytes, signature: bytes) -> bool:
        return isinstance(origin, str) and trust.signed_by(
            origin, material, signature, now=time.time()
        )

    return verify


def mapping_verifier(keys: Mapping[str, bytes]) -> Verifier:
    def verify(origin: Any, material: bytes, signature: bytes) -> bool:
        key = keys.get(origin) if isinstance(origin, str) else None
        return key is not None and signature_valid(key, material, signature)

    return verify


class PeerTrust:
    """The agent's keys: exactly one of ``verify_keys`` or ``trust``."""

    def __init__(self, verify_keys: Mapping[str, bytes] | None, trust: TrustStore | None) -> None:
        if (verify_keys is None) == (trust is None):
            raise UsageError(
                "give exactly one of verify_keys (agent id -> Ed25519 verify key) or trust "
                "(a TrustStore): origin signatures are always checked"
            )
        self.verify_keys, self.trust = verify_keys, trust

    def secure(self, secure: bool | None) -> bool:
        """Whether to run over secure sessions: by default when we have a trust store, and
        never without one (``verify_keys`` cannot authenticate a handshake)."""
        if secure is None:
            return self.trust is not None
        if secure and self.trust is None:
            raise UsageError(
                "secure=True needs trust (a TrustStore) to authenticate peers by handshake; "
                "verify_keys only checks origin signatures (signed-only, secure=False)"
            )
        return secure

    def verifier(self) -> Verifier:
        """The machine's ``verify`` callback over whichever keys we have."""
        if self.trust is not None:
            return trust_verifier(self.trust)
        assert self.verify_keys is not None
        return mapping_verifier(self.verify_keys)

    def trusted(self, peer: str) -> bool:
        """Whether ``peer`` is an id the verifier knows (in ``verify_keys``, or trusted by the
        trust store now: not unknown, revoked or expired). This is a check on the *claimed*
        routing id only; see the module docstring."""
        if self.verify_keys is not None:
            return peer in self.verify_keys
        assert self.trust is not None
        try:
            self.trust.lookup(peer, now=time.time())
        except SecurityError:
            return False
        return True

    def untrusted(self, peers: Iterable[Any], known: Mapping[str, str]) -> list[str]:
        """Which of ``peers`` the trust store no longer trusts (revoked or expired since they
        joined: only their new control items and publications were refused until now). A
        peer in ``known`` (configured with add_peer()) that the store simply does not list is
        the caller's choice and stays; a fixed ``verify_keys`` mapping never changes, so there
        is nothing to look at."""
        out: list[str] = []
        if self.trust is None:
            return out
        for peer in peers:
            if not isinstance(peer, str):
                continue
            try:
                self.trust.lookup(peer, now=time.time())
            except SecurityError as exc:
                if peer in known and exc.reason == "unknown_peer":
                    continue
                out.append(peer)
        return out


def tcp_endpoint(event: PeerEvent) -> str | None:
    """Default endpoint of a discovered peer: its first advertised port over tcp.

    The address comes from the peer's own record, so it must be an IP address literal (IPv6
    is bracketed); a host name is never resolved and anything else gives None (no endpoint).
    """
    if not event.ports:
        return None
    port = event.ports[0]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    try:
        address = ipaddress.ip_address(event.address)
    except ValueError:  # a name, garbage, or not even a string
        return None
    if address.version == 6:
        if address.scope_id is not None:  # fe80::1%eth0: names a local interface
            return None
        return f"tcp://[{address}]:{port}"
    return f"tcp://{address}:{port}"
