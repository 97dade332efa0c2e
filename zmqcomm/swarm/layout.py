"""A throw-away swarm on disk: identities, trust stores, a policy and per-agent settings.

Everything lives under one directory (removed after the run unless kept)::

    keys/          broker.key/.pub, agent-0.key/.pub, ...
    trust/broker/  the agents' .pub files (role "agent")
    trust/agents/  the broker's and every agent's .pub files
    policy.toml    what agents may ask of the broker, and of each other
    agent-N.json   the settings of agent N; agent-N.status.json / .result.json it writes
    endpoints.json peer-to-peer mode: every agent's id and where it listens
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from zmqcomm.crypto.key_files import save_identity
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore

POLICY = """\
# Written by 'zmqcomm swarm'. Agents may use the broker's routing, mail and topics, and
# send each other data, requests and replies; nothing else is granted.
[roles.agent]
send = ["DATA", "REQUEST", "REPLY", "PUBLISH", "FORWARD", "MAIL", "SUBSCRIBE", "BROKER_STATS"]
publish = ["swarm/*"]
subscribe = ["swarm/*"]
rate = 50000.0
burst = 100000
"""


@dataclass
class AgentSettings:
    index: int
    name: str
    directory: str
    endpoint: str
    peers: list[str]
    duration: float
    size: int
    rate: float
    request_every: int
    rekey_every: int
    seed: int
    topic: str = "swarm/news"
    publish_every: int = 50
    #: Peer-to-peer mode: where this agent accepts peers (instead of using a broker).
    listen: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.directory) / f"{self.name}.json"

    @property
    def status_path(self) -> Path:
        return Path(self.directory) / f"{self.name}.status.json"

    @property
    def peer_to_peer(self) -> bool:
        return self.listen is not None

    @property
    def result_path(self) -> Path:
        return Path(self.directory) / f"{self.name}.result.json"

    def save(self) -> None:
        write_json(self.path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AgentSettings:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def write_json(path: Path, data: object) -> None:
    """Atomically, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, object] | None:
    try:
        loaded: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded


def create(directory: Path, agents: int) -> tuple[Identity, list[Identity]]:
    """Keys, trust stores and the policy for a broker and ``agents`` agents."""
    keys = directory / "keys"
    broker = Identity.generate("broker")
    members = [Identity.generate(f"agent-{index}") for index in range(agents)]
    for identity in (broker, *members):
        save_identity(identity, keys)
    broker_trust = TrustStore(directory / "trust" / "broker")
    agent_trust = TrustStore(directory / "trust" / "agents")
    agent_trust.add(broker.public, roles=["broker"])
    for member in members:
        broker_trust.add(member.public, roles=["agent"])
        agent_trust.add(member.public, roles=["agent"])
    (directory / "policy.toml").write_text(POLICY, encoding="utf-8")
    return broker, members
