"""A deterministic simulator for zmqcomm's pure protocol machines (see ``simulator.py``)."""

from zmqcomm.sim import byzantine
from zmqcomm.sim.network import LinkModel, Network, fixed, lognormal, uniform
from zmqcomm.sim.simulator import Simulator, TraceEvent

__all__ = [
    "LinkModel",
    "Network",
    "Simulator",
    "TraceEvent",
    "byzantine",
    "fixed",
    "lognormal",
    "uniform",
]
