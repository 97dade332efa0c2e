"""Secure sockets: a thin blocking driver around :class:`ChannelTable` on ROUTER and DEALER.

:class:`SecureRouter` binds and accepts authenticated peers; :class:`SecureDealer` connects to
one router. Every message on every transport (inproc included) is end-to-end encrypted and
authenticated by the session the two agents agreed; a ZeroMQ routing id is only a return
address. The protocol logic lives in the pure table; this module moves frames, reads the
clock and the OS random source, and watches for reconnects so the dealer re-handshakes::

    with SecureRouter("ipc:///tmp/zc/a.sock", identity=server, trust=trust) as router, \
         SecureDealer(router.endpoint, identity=client, trust=trust) as dealer:
        dealer.send({"op": "ping"})
        delivered = router.receive(timeout=1.0)
        router.send(delivered.agent_id, {"op": "pong"})
"""

from zmqcomm.secure.base import DEFAULT_MAX_INBOX
from zmqcomm.secure.dealer import SecureDealer
from zmqcomm.secure.router import SecureRouter

__all__ = ["DEFAULT_MAX_INBOX", "SecureDealer", "SecureRouter"]
