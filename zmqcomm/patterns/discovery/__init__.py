"""LAN discovery, pure: signed UDP beacons (:mod:`.beacon`) and a peer table (:mod:`.peers`)."""

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
from zmqcomm.patterns.discovery.peers import PeerEvent, PeerInfo, PeerTable

__all__ = [
    "MAX_BEACON_LEN",
    "MIN_BEACON_LEN",
    "Beacon",
    "BeaconAuthenticationError",
    "BeaconError",
    "PeerEvent",
    "PeerInfo",
    "PeerTable",
    "TrustLookup",
    "decode_beacon",
    "encode_beacon",
]
