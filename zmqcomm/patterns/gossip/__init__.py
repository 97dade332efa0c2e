"""Pure gossip (eager push over a mesh, lazy IHave/IWant repair): see :mod:`.machine`."""

from zmqcomm.patterns.gossip.machine import (
    Adopt,
    Deliver,
    GossipNode,
    Graft,
    IHave,
    IWant,
    Message,
    Prune,
    Publish,
    ed25519_verifier,
    id_material,
    message_id,
)

__all__ = [
    "Adopt",
    "Deliver",
    "GossipNode",
    "Graft",
    "IHave",
    "IWant",
    "Message",
    "Prune",
    "Publish",
    "ed25519_verifier",
    "id_material",
    "message_id",
]
