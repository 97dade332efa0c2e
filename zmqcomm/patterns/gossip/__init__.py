"""Pure gossip (eager push over a mesh, lazy IHave/IWant repair): see :mod:`.machine`."""

from zmqcomm.patterns.gossip.machine import (
    Deliver,
    GossipNode,
    Graft,
    IHave,
    IWant,
    Message,
    Publish,
    ed25519_verifier,
    id_material,
    message_id,
)

__all__ = [
    "Deliver",
    "GossipNode",
    "Graft",
    "IHave",
    "IWant",
    "Message",
    "Publish",
    "ed25519_verifier",
    "id_material",
    "message_id",
]
