"""``zmqcomm trust add`` and ``zmqcomm trust list``: a trust store with roles, without editing
JSON by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zmqcomm.access import Policy
from zmqcomm.cli.main import EXIT_USAGE, main
from zmqcomm.crypto.key_files import save_identity
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.wire import MessageType

NOW = 1_800_000_000.0


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Identity]:
    identities = {name: Identity.generate(name) for name in ("alice", "bob")}
    for identity in identities.values():
        save_identity(identity, tmp_path / "keys")
    return identities


def test_added_keys_carry_the_roles_a_policy_grants(
    tmp_path: Path, keys: dict[str, Identity], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = tmp_path / "trust" / "broker"
    pubs = [str(tmp_path / "keys" / f"{name}.pub") for name in ("alice", "bob")]
    assert main(["trust", "add", *pubs, "--to", str(store_dir), "--roles", "worker"]) == 0
    out = capsys.readouterr().out
    assert keys["alice"].agent_id in out and "roles: worker" in out

    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[roles.worker]\nsend = ["FORWARD"]\n', encoding="utf-8")
    policy = Policy.load(policy_file)
    entry = TrustStore(store_dir).lookup(keys["bob"].agent_id, now=NOW)
    assert entry.roles == frozenset({"worker"})
    policy.check_send(keys["bob"].agent_id, entry.roles, MessageType.FORWARD)  # granted


def test_adding_again_replaces_roles_and_expiry_and_list_shows_them(
    tmp_path: Path, keys: dict[str, Identity], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = str(tmp_path / "trust")
    bob = str(tmp_path / "keys" / "bob.pub")
    assert main(["trust", "add", bob, "--to", store_dir, "--roles", "worker"]) == 0
    changed = ["--roles", "sensor, worker", "--expires", "2020-01-01T00:00:00Z"]
    assert main(["trust", "add", bob, "--to", store_dir, *changed]) == 0
    capsys.readouterr()
    assert main(["trust", "list", store_dir]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(keys["bob"].agent_id)
    assert "roles: sensor,worker  expires 2020-01-01T00:00:00Z (EXPIRED)" in line
    assert main(["trust", "list", store_dir, "--json"]) == 0
    (record,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert record["roles"] == ["sensor", "worker"] and record["expired"] is True
    assert record["name"] == "bob"


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        (["keys/alice.pub"], ["--roles", "a,,b"], "has an empty name"),
        (["keys/alice.pub"], ["--roles", "bad role"], "invalid role name 'bad role'"),
        (["keys/alice.pub"], ["--expires", "soon"], "not an ISO 8601 time"),
        (["keys/nope.pub"], [], "no such file"),
        (["keys/alice.key"], [], "expected 'zmqcomm-public-key'"),  # the secret, by mistake
        (["keys/bob.pub", "keys/alice.key"], [], "expected 'zmqcomm-public-key'"),
    ],
)
def test_bad_input_writes_nothing(
    tmp_path: Path,
    keys: dict[str, Identity],
    capsys: pytest.CaptureFixture[str],
    files: list[str],
    extra: list[str],
    message: str,
) -> None:
    store_dir = tmp_path / "new-store"
    paths = [str(tmp_path / name) for name in files]
    assert main(["trust", "add", *paths, "--to", str(store_dir), *extra]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not store_dir.exists()


def test_listing_a_missing_store_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trust", "list", str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert "no trust store there" in capsys.readouterr().err


def test_adding_a_revoked_or_already_expired_key_warns(
    tmp_path: Path, keys: dict[str, Identity], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = tmp_path / "trust"
    bob = str(tmp_path / "keys" / "bob.pub")
    assert main(["trust", "add", bob, "--to", str(store_dir)]) == 0
    assert capsys.readouterr().err == ""
    assert TrustStore(store_dir).revoke(keys["bob"].agent_id)
    assert main(["trust", "add", bob, "--to", str(store_dir)]) == 0
    assert "was revoked; it is trusted again" in capsys.readouterr().err
    assert keys["bob"].agent_id in TrustStore(store_dir)
    past = ["--expires", "2020-01-01T00:00:00Z"]
    assert main(["trust", "add", bob, "--to", str(store_dir), *past]) == 0
    assert "--expires is in the past" in capsys.readouterr().err


def test_a_new_key_under_a_trusted_name_warns_and_revoke_retires_the_old_one(
    tmp_path: Path, keys: dict[str, Identity], capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a walkthrough: 'keygen bob --force' then 'trust add' left both of bob's keys
    trusted without a word, and no command could take the old one back."""
    store_dir = tmp_path / "trust"
    old_bob = keys["bob"]
    assert main(["trust", "add", str(tmp_path / "keys" / "bob.pub"), "--to", str(store_dir)]) == 0
    new_bob = Identity.generate("bob")
    save_identity(new_bob, tmp_path / "new")
    capsys.readouterr()
    assert main(["trust", "add", str(tmp_path / "new" / "bob.pub"), "--to", str(store_dir)]) == 0
    err = capsys.readouterr().err
    assert f"also trusts another key named bob ({old_bob.agent_id})" in err
    assert f"zmqcomm trust revoke {old_bob.agent_id} --in {store_dir}" in err
    # By name, two entries are ambiguous; by agent id it is not.
    assert main(["trust", "revoke", "bob", "--in", str(store_dir)]) == EXIT_USAGE
    assert "2 entries are named 'bob'" in capsys.readouterr().err
    assert main(["trust", "revoke", old_bob.agent_id, "--in", str(store_dir)]) == 0
    assert "refused from its next message on" in capsys.readouterr().out
    store = TrustStore(store_dir)
    assert old_bob.agent_id in store.revoked() and old_bob.agent_id not in store
    assert new_bob.agent_id in store
    # A name only one entry has is enough.
    assert main(["trust", "revoke", "bob", "--in", str(store_dir)]) == 0
    assert new_bob.agent_id not in TrustStore(store_dir)


@pytest.mark.parametrize(
    ("who", "says"),
    [("carol", "neither an agent id nor a name"), ("not/an/id", "neither an agent id")],
)
def test_revoking_someone_unknown_is_a_clear_usage_error(
    tmp_path: Path, keys: dict[str, Identity], capsys: pytest.CaptureFixture[str], who: str,
    says: str,
) -> None:  # fmt: skip
    store_dir = tmp_path / "trust"
    assert main(["trust", "add", str(tmp_path / "keys" / "bob.pub"), "--to", str(store_dir)]) == 0
    assert main(["trust", "revoke", who, "--in", str(store_dir)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert main(["trust", "revoke", "bob", "--in", str(tmp_path / "nowhere")]) == EXIT_USAGE


def test_a_damaged_file_in_the_store_does_not_block_a_revocation(
    tmp_path: Path, keys: dict[str, Identity], capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in review: the store was loaded strictly, so one half-written .pub file made
    'trust revoke' (and 'trust list') fail, when revoking is what cannot wait."""
    store_dir = tmp_path / "trust"
    bob = keys["bob"]
    assert main(["trust", "add", str(tmp_path / "keys" / "bob.pub"), "--to", str(store_dir)]) == 0
    (store_dir / "broken.pub").write_text("{not json", encoding="utf-8")
    capsys.readouterr()
    assert main(["trust", "list", str(store_dir)]) == 0
    listed = capsys.readouterr()
    assert bob.agent_id in listed.out and "skipped" in listed.err and "broken.pub" in listed.err
    assert main(["trust", "revoke", "bob", "--in", str(store_dir)]) == 0
    assert bob.agent_id in TrustStore(store_dir, strict=False).revoked()


def test_revoking_twice_says_so_and_a_name_that_looks_like_an_id_is_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    looks_like_an_id = "abcdefghijklmnopqrstuvwxyz"  # 26 letters: a valid agent id's shape
    odd = Identity.generate(looks_like_an_id)
    save_identity(odd, tmp_path / "keys")
    store_dir = tmp_path / "trust"
    pub = str(tmp_path / "keys" / f"{looks_like_an_id}.pub")
    assert main(["trust", "add", pub, "--to", str(store_dir)]) == 0
    assert main(["trust", "revoke", looks_like_an_id, "--in", str(store_dir)]) == 0
    assert f"revoked {odd.agent_id}" in capsys.readouterr().out
    assert odd.agent_id not in TrustStore(store_dir)
    assert main(["trust", "revoke", odd.agent_id, "--in", str(store_dir)]) == 0
    assert f"{odd.agent_id} is already revoked" in capsys.readouterr().out
    # By name too (found in review: the name was gone with the entry, so a second revoke
    # failed, or for this id-shaped name wrote a marker for an id nobody holds).
    assert main(["trust", "revoke", looks_like_an_id, "--in", str(store_dir)]) == 0
    assert f"{odd.agent_id} is already revoked" in capsys.readouterr().out
    assert not (store_dir / "revoked" / f"{looks_like_an_id}.revoked").exists()
    # A well-formed id nobody in the store holds: revoked ahead, with a warning to check it.
    stranger = Identity.generate("stranger").agent_id
    assert main(["trust", "revoke", stranger, "--in", str(store_dir)]) == 0
    assert "is not in" in capsys.readouterr().err
    assert stranger in TrustStore(store_dir).revoked()
