"""Discovery, pure: signed UDP beacons (:mod:`.beacon`), a peer table (:mod:`.peers`), and SWIM
membership through seed peers (:mod:`.membership`, wire format in :mod:`.membership_wire`).

The UDP drivers (:mod:`.udp` for beacons, :mod:`.membership_udp` for membership) are imported
from their modules: they open sockets.
"""

from zmqcomm.patterns.discovery.beacon import (
    MAX_BEACON_LEN,
    MIN_BEACON_LEN,
    Beacon,
    BeaconAuthenticationError,
    BeaconError,
    TrustLookup,
    decode_beacon,
    encode_beacon,
)
from zmqcomm.patterns.discovery.membership import Membership
from zmqcomm.patterns.discovery.membership_config import (
    MemberInfo,
    MembershipConfig,
    ed25519_verify,
)
from zmqcomm.patterns.discovery.membership_wire import (
    MAX_DATAGRAM,
    MembershipWireError,
    Packet,
    Record,
    Update,
    decode_packet,
    encode_packet,
)
from zmqcomm.patterns.discovery.peers import PeerEvent, PeerInfo, PeerTable

__all__ = [
    "MAX_BEACON_LEN",
    "MAX_DATAGRAM",
    "MIN_BEACON_LEN",
    "Beacon",
    "BeaconAuthenticationError",
    "BeaconError",
    "MemberInfo",
    "Membership",
    "MembershipConfig",
    "MembershipWireError",
    "Packet",
    "PeerEvent",
    "PeerInfo",
    "PeerTable",
    "Record",
    "TrustLookup",
    "Update",
    "decode_beacon",
    "decode_packet",
    "ed25519_verify",
    "encode_beacon",
    "encode_packet",
]
