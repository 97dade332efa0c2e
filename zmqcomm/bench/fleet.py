"""A broker and many agents on disk (keys, trust stores), shared by the broker sections."""

from __future__ import annotations

from pathlib import Path

from zmqcomm.crypto.key_files import load_identity
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.swarm.layout import create


def fleet(workdir: Path, agents: int) -> Path:
    """A directory with identities for a broker and ``agents`` agents, made once per run."""
    directory = workdir / f"fleet-{agents}"
    if not (directory / "keys").exists():
        create(directory, agents)
    return directory


def broker_identity(directory: str) -> tuple[Identity, TrustStore]:
    base = Path(directory)
    return load_identity(base / "keys" / "broker.key"), TrustStore(base / "trust" / "broker")


def agent_trust(directory: str) -> TrustStore:
    """The agents' trust store (the broker and every agent). Loading it checks every entry's
    signature: a process that runs many agents loads it once and shares it."""
    return TrustStore(Path(directory) / "trust" / "agents")


def agent_identity(
    directory: str, index: int, trust: TrustStore | None = None
) -> tuple[Identity, TrustStore]:
    identity = load_identity(Path(directory) / "keys" / f"agent-{index}.key")
    return identity, agent_trust(directory) if trust is None else trust
