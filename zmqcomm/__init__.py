"""zmqcomm: secure, fast messaging for agent swarms over ZeroMQ."""

from zmqcomm.errors import ZmqCommError

__version__ = "0.1.0"

__all__ = ["ZmqCommError", "__version__"]
