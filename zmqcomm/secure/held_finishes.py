"""Rekey FINISH frames that found the peer's queue full, waiting for room.

A FINISH switches its sender to the new keys as it goes out, so it may be neither dropped
(the peer would refuse all that follows, unseen) nor waited for inside a pump (one peer
that does not read would stall, or stop, a socket serving many). A secure socket holds it
here, per route and oldest first, with the session (channel) it belongs to; sends it
before the next data to that route, which is sealed under the keys it puts in force, or on
a later pump once there is room; and drops it, never to be sent, once its session has been
replaced (a reconnect). While a FINISH waits, the socket pauses the expiry of the session's
previous receive key (the peer seals under it until the FINISH arrives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zmqcomm.wire.payload import Buffer

#: Sends one FINISH on the route; raises (QueueFullError, SendTimeout, ...) when it cannot.
Send = Callable[[Sequence[Buffer]], None]


class HeldFinishes:
    def __init__(self) -> None:
        self._held: dict[bytes, tuple[object, list[Sequence[Buffer]]]] = {}
        #: How many FINISH frames had to be held for want of room.
        self.held = 0

    def __bool__(self) -> bool:
        return bool(self._held)

    def waiting(self, route: bytes, session: object) -> bool:
        """Whether FINISH frames of ``session`` wait for ``route``; those of a session since
        replaced are dropped here."""
        entry = self._held.get(route)
        if entry is None:
            return False
        if entry[0] is session:
            return True
        del self._held[route]
        return False

    def hold(self, route: bytes, session: object, frames: Sequence[Buffer]) -> None:
        """Keep ``frames`` for ``route``, behind any FINISH of the same session."""
        if self.waiting(route, session):
            self._held[route][1].append(frames)
        else:
            self._held[route] = (session, [frames])
            self.held += 1

    def release(self, route: bytes, send: Send) -> None:
        """Send what waits for ``route``, oldest first. An error from ``send`` comes out
        with the rest still held."""
        queued = self._held[route][1]
        while queued:
            send(queued[0])
            queued.pop(0)
        del self._held[route]

    def forget(self, route: bytes) -> None:
        self._held.pop(route, None)

    def routes(self) -> list[bytes]:
        """Every route with something held (a copy: releasing changes the table)."""
        return list(self._held)
