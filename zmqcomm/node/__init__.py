"""The agent's API: :class:`Node` and the :class:`Incoming` messages it hands out."""

from zmqcomm.node.messages import Incoming
from zmqcomm.node.node import Node

__all__ = ["Incoming", "Node"]
