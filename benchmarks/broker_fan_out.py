"""What one publication costs the broker's core with many agents online.

Each agent subscribes to one of 100 shared topics and to a topic of its own; one agent also
to the pattern ``topic.*``. A publication on one shared topic then reaches about one agent in
a hundred. Until 2026-11-27 the core asked every online agent whether it matched (0.49 ms
per publication with 1,000 agents); it now looks the subscribers up by topic. Pure core
only: no sockets, no encryption (the broker's real relay is ``zmqcomm bench --only relay``).

    python benchmarks/broker_fan_out.py
    python benchmarks/broker_fan_out.py --agents 100 1000 10000
"""

from __future__ import annotations

import argparse
import timeit
from functools import partial

from zmqcomm.broker.core import BrokerCore
from zmqcomm.wire import MessageType


def _core_with(agents: int) -> BrokerCore:
    core = BrokerCore()
    for n in range(agents):
        name = f"agent{n}"
        core.connected(name, ["agent"], now=0.0)
        core.handle(name, MessageType.SUBSCRIBE, f"topic.{n % 100}", None, now=0.0)
        core.handle(name, MessageType.SUBSCRIBE, f"own.{n}", None, now=0.0)
    core.handle("agent1", MessageType.SUBSCRIBE, "topic.*", None, now=0.0)
    return core


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[100, 1000, 3000])
    args = parser.parse_args()
    print("agents  recipients  us per publication")
    for agents in args.agents:
        core = _core_with(agents)
        sends = core.handle("agent0", MessageType.PUBLISH, "topic.5", b"x" * 64, now=0.0)
        assert all(send.msg_type == MessageType.PUBLISH for send in sends)
        number = 2000
        publish = partial(core.handle, "agent0", MessageType.PUBLISH, "topic.5", b"x" * 64, now=0.0)
        seconds = timeit.timeit(publish, number=number)
        print(f"{agents:6}  {len(sends):10}  {seconds / number * 1e6:18.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
