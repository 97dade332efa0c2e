"""``zmqcomm keygen`` and ``zmqcomm keyinfo`` through the real entry point."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.pwhash import argon2id

from zmqcomm.cli import keys as cli_keys
from zmqcomm.cli.common import load_node_identity
from zmqcomm.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from zmqcomm.crypto import key_files
from zmqcomm.crypto.key_files import load_identity, load_public, public_file_bytes
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError


@pytest.fixture(autouse=True)
def _cheap_kdf_and_no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(key_files, "DEFAULT_OPSLIMIT", argon2id.OPSLIMIT_MIN)
    monkeypatch.setattr(key_files, "DEFAULT_MEMLIMIT", argon2id.MEMLIMIT_MIN)
    monkeypatch.delenv(cli_keys.PASSPHRASE_ENV, raising=False)
    yield


def _prompts(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Feed getpass; returns the prompts it was shown."""
    shown: list[str] = []
    queue = list(answers)

    def fake(prompt: str = "") -> str:
        shown.append(prompt)
        return queue.pop(0)

    monkeypatch.setattr(cli_keys.getpass, "getpass", fake)
    monkeypatch.setattr(cli_keys, "_terminal_available", lambda: True)
    return shown


def test_keygen_writes_both_files_and_prints_the_agent_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "alice", "--dir", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    public = load_public(tmp_path / "alice.pub")
    assert f"agent id  {public.agent_id}" in out
    assert str(tmp_path / "alice.key") in out and str(tmp_path / "alice.pub") in out
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600
    assert load_identity(tmp_path / "alice.key").agent_id == public.agent_id


def test_keygen_defaults_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", "bob"]) == EXIT_OK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob.key", "bob.pub"]


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keygen", "alice", "--dir", str(tmp_path)])
    before = (tmp_path / "alice.key").read_bytes()
    capsys.readouterr()
    assert main(["keygen", "alice", "--dir", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert (tmp_path / "alice.key").read_bytes() == before


def test_keygen_force_replaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["keygen", "alice", "--dir", str(tmp_path), "--json"])
    first = json.loads(capsys.readouterr().out)
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--force", "--json"]) == EXIT_OK
    second = json.loads(capsys.readouterr().out)
    assert first["agent_id"] != second["agent_id"]
    assert load_public(tmp_path / "alice.pub").agent_id == second["agent_id"]
    assert second == {
        "name": "alice",
        "agent_id": second["agent_id"],
        "secret": str(tmp_path / "alice.key"),
        "public": str(tmp_path / "alice.pub"),
        "passphrase": False,
    }


def test_keygen_passphrase_from_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _prompts(monkeypatch, "s3cret pass", "s3cret pass")
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase"]) == EXIT_OK
    assert len(shown) == 2
    assert "passphrase-protected" in capsys.readouterr().out
    assert load_identity(tmp_path / "alice.key", passphrase="s3cret pass")


def test_keygen_passphrase_mismatch_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _prompts(monkeypatch, "one", "two")
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase"]) == EXIT_USAGE
    assert "differ" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_keygen_empty_passphrase_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prompts(monkeypatch, "", "")
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase"]) == EXIT_USAGE
    monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, "")
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase"]) == EXIT_USAGE
    assert list(tmp_path.iterdir()) == []


def test_keygen_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, "from env")
    shown = _prompts(monkeypatch)
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase", "--json"]) == 0
    assert shown == []
    assert json.loads(capsys.readouterr().out)["passphrase"] is True
    assert load_identity(tmp_path / "alice.key", passphrase="from env")
    assert "from env" not in (tmp_path / "alice.key").read_text()


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", ""])
def test_keygen_bad_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", name]) == EXIT_USAGE
    assert "invalid key name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_keygen_makes_a_missing_directory_private(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "keys"
    assert main(["keygen", "alice", "--dir", str(directory)]) == EXIT_OK
    assert (directory / "alice.key").exists()
    assert directory.stat().st_mode & 0o777 == 0o700


def test_keygen_into_a_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["keygen", "alice", "--dir", str(tmp_path / "afile")]) == EXIT_USAGE
    assert "not a directory" in capsys.readouterr().err


def test_keyinfo_public_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["keygen", "alice", "--dir", str(tmp_path)])
    capsys.readouterr()
    public = load_public(tmp_path / "alice.pub")
    assert main(["keyinfo", str(tmp_path / "alice.pub")]) == EXIT_OK
    out = capsys.readouterr().out
    assert public.agent_id in out and public.verify_key.hex() in out
    assert public.static_public.hex() in out and "valid" in out
    assert main(["keyinfo", str(tmp_path / "alice.pub"), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "public" and report["ok"] is True
    assert report["sender_id"] == public.sender_id.hex()
    assert report["certificate"] == {"valid": True, "expires": None, "error": None}


def test_keyinfo_secret_file_checks_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, "pw")
    main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase"])
    capsys.readouterr()
    assert main(["keyinfo", str(tmp_path / "alice.key"), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "secret" and report["mode"] == "0600" and report["mode_ok"]
    assert report["passphrase"] is True and report["secrets_checked"] is True
    text = json.dumps(report)
    secret_b64 = json.loads((tmp_path / "alice.key").read_text())["secret"]
    assert secret_b64 not in text


def test_keyinfo_asks_for_the_passphrase_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key_files.save_identity(Identity.generate("alice"), tmp_path, passphrase="pw")
    shown = _prompts(monkeypatch, "pw")
    assert main(["keyinfo", str(tmp_path / "alice.key")]) == EXIT_OK
    assert len(shown) == 1
    assert "match the public keys" in capsys.readouterr().out


def test_keyinfo_wrong_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key_files.save_identity(Identity.generate("alice"), tmp_path, passphrase="pw")
    monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, "nope")
    assert main(["keyinfo", str(tmp_path / "alice.key")]) == EXIT_USAGE
    assert "wrong passphrase" in capsys.readouterr().err


def test_keyinfo_with_an_empty_passphrase_says_the_file_needs_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key_files.save_identity(Identity.generate("alice"), tmp_path, passphrase="pw")
    _prompts(monkeypatch, "")  # Enter pressed at the prompt
    assert main(["keyinfo", str(tmp_path / "alice.key")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is protected: give its passphrase" in err and "unprotected" not in err


def test_keyinfo_public_only_skips_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key_files.save_identity(Identity.generate("alice"), tmp_path, passphrase="pw")
    shown = _prompts(monkeypatch)
    assert main(["keyinfo", str(tmp_path / "alice.key"), "--public-only"]) == EXIT_OK
    assert shown == [] and "not checked" in capsys.readouterr().out


def test_keyinfo_flags_a_loose_mode_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keygen", "alice", "--dir", str(tmp_path)])
    secret = tmp_path / "alice.key"
    secret.chmod(0o644)
    capsys.readouterr()
    assert main(["keyinfo", str(secret)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "0644 UNSAFE" in out and f"chmod 600 {secret}" in out


def test_keyinfo_flags_an_expired_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = Identity.generate("old", cert_expires=1_000_000_000)
    path = tmp_path / "old.pub"
    path.write_bytes(public_file_bytes(identity.public))
    assert main(["keyinfo", str(path)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "INVALID" in out and "expired" in out and "2001-09-09T01:46:40Z" in out
    assert main(["keyinfo", str(path), "--json"]) == EXIT_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["certificate"]["expires"] == "2001-09-09T01:46:40Z"
    assert report["ok"] is False


@pytest.mark.parametrize("suffix", [".pub", ".key"])
def test_keyinfo_on_a_certificate_expiring_past_what_gmtime_can_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    far = 2**62  # valid: a certificate expiry may be anything below 2**63
    key_files.save_identity(Identity.generate("far", cert_expires=far), tmp_path)
    path = tmp_path / f"far{suffix}"
    assert main(["keyinfo", str(path), "--public-only"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "valid, vouches for the x25519 key" in out and str(far) in out
    assert main(["keyinfo", str(path), "--public-only", "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and str(far) in report["certificate"]["expires"]


def test_keyinfo_shows_trust_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = TrustStore(tmp_path).add(Identity.generate("w").public, ["worker"])
    assert main(["keyinfo", str(entry.path)]) == EXIT_OK
    assert 'trust roles    ["worker"]' in capsys.readouterr().out


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{broken",
        '{"format": "something-else"}',
        "[" * 20_000 + "]" * 20_000,  # RecursionError in json.loads
        '{"version": ' + "1" * 5_000 + "}",  # ValueError: past the int digit limit
    ],
)
def test_keyinfo_on_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "x.pub"
    path.write_text(content)
    assert main(["keyinfo", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("zmqcomm keyinfo: error:") and err.count("\n") == 1


def test_keyinfo_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keyinfo", str(tmp_path / "none.key")]) == EXIT_USAGE
    assert "no such key file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["keygen", "keyinfo"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"zmqcomm {command} " in out


def test_missing_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["keygen"])
    assert info.value.code == EXIT_USAGE


def test_keygen_without_a_terminal_or_the_variable_says_how_to_give_a_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_keys, "_terminal_available", lambda: False)
    monkeypatch.setattr(sys, "stdin", None)  # closed, as with <&-
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert cli_keys.PASSPHRASE_ENV in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def _without_a_terminal(
    args: list[str], stdin: bytes, *, shell_after: str = ""
) -> subprocess.CompletedProcess[bytes]:
    """Run ``zmqcomm ARGS`` in a new session (no controlling terminal), ``stdin`` piped in;
    ``shell_after`` runs next, if it succeeded, in the same shell on the same stdin."""
    command = " ".join(f"'{part}'" for part in [sys.executable, "-m", "zmqcomm.cli.main", *args])
    env = {key: value for key, value in os.environ.items() if key != cli_keys.PASSPHRASE_ENV}
    return subprocess.run(
        ["sh", "-c", f"{command} && {shell_after}" if shell_after else command],
        input=stdin,
        capture_output=True,
        start_new_session=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_passphrase_piped_in_without_a_terminal_is_one_line_of_stdin(tmp_path: Path) -> None:
    """getpass read it too, but warned first that input may be echoed; a line end from
    Windows must not become part of the passphrase."""
    made = _without_a_terminal(
        ["keygen", "alice", "--dir", str(tmp_path), "--passphrase"], b"s3cret\r\ns3cret\r\n"
    )
    assert made.returncode == EXIT_OK and b"echoed" not in made.stderr, made.stderr
    key = str(tmp_path / "alice.key")
    opened = subprocess.run(
        [sys.executable, "-m", "zmqcomm.cli.main", "keyinfo", key],
        env={**os.environ, cli_keys.PASSPHRASE_ENV: "s3cret"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert opened.returncode == EXIT_OK, opened.stderr
    # Only its line is taken: the rest of stdin is still there for the next reader.
    read = _without_a_terminal(["keyinfo", key], b"s3cret\nthe rest\n", shell_after="cat")
    assert read.returncode == EXIT_OK, read.stderr
    assert read.stdout.endswith(b"the rest\n")
    once = _without_a_terminal(["keygen", "bob", "--dir", str(tmp_path), "--passphrase"], b"pw\n")
    assert once.returncode == EXIT_USAGE and b"asked twice" in once.stderr, once.stderr
    args = ["keygen", "carol", "--dir", str(tmp_path), "--passphrase"]
    not_text = _without_a_terminal(args, b"pw\n\xff\n")
    assert not_text.returncode == EXIT_USAGE and b"not UTF-8" in not_text.stderr
    endless = _without_a_terminal(["keyinfo", key], b"x" * 5000)  # /dev/zero, say
    assert endless.returncode == EXIT_USAGE and b"longer than 4096 bytes" in endless.stderr
    empty = _without_a_terminal(["keyinfo", key], b"")
    assert empty.returncode == EXIT_USAGE
    assert empty.stderr.count(b"\n") == 1 and b"no terminal to ask on" in empty.stderr


def test_keygen_into_a_directory_it_cannot_make_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["keygen", "alice", "--dir", str(blocker / "keys")]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("zmqcomm keygen: error: ") and err.count("\n") == 1
    assert str(blocker) in err


def test_a_reader_that_went_away_is_not_an_error(tmp_path: Path) -> None:
    """``zmqcomm keyinfo ... --json | head -1`` printed 'error: [Errno 32] Broken pipe;
    check the path and its permissions' and exited 1 when head left first."""
    key = tmp_path / "alice.key"
    assert main(["keygen", "alice", "--dir", str(tmp_path)]) == EXIT_OK
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        result = subprocess.run(
            [sys.executable, "-m", "zmqcomm.cli.main", "keyinfo", str(key), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (EXIT_OK, "")


def _read_until(master: int, wanted: bytes, seconds: float = 30.0) -> bytes:
    """What the terminal shows, until ``wanted`` appears (or the other side closes it)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: nobody has the terminal open any more
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _exit_status(pid: int, *, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    return None


@pytest.fixture
def protected_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, "s3cret")
    assert main(["keygen", "alice", "--dir", str(tmp_path), "--passphrase"]) == EXIT_OK
    monkeypatch.delenv(cli_keys.PASSPHRASE_ENV)
    return tmp_path / "alice.key"


def test_with_a_terminal_the_passphrase_is_asked_there_even_when_stdin_is_redirected(
    protected_key: Path,
) -> None:
    """As getpass does: the terminal, not a pipe on stdin, is where a person types it."""
    pid, master = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        command = f"printf 'not it\\n' | '{sys.executable}' -m zmqcomm.cli.main keyinfo "
        os.execv("/bin/sh", ["sh", "-c", command + f"'{protected_key}'"])
    status = None
    try:
        prompt = _read_until(master, b"passphrase for")
        os.write(master, b"s3cret\n")
        shown = prompt + _read_until(master, b"\0")  # all, until the child lets it go
        status = _exit_status(pid, seconds=30)  # before the terminal closes: a hang-up
    finally:
        if status is None:  # still running: it never asked, or hangs
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)
    assert status is not None, shown
    assert b"passphrase for" in prompt
    assert b"match the public keys" in shown, shown
    assert b"s3cret" not in shown  # not echoed
    assert os.waitstatus_to_exitcode(status) == EXIT_OK


def test_a_terminal_on_stdin_without_a_controlling_one_is_still_not_echoed(
    protected_key: Path,
) -> None:
    """No /dev/tty (a new session), but stdin is a terminal: the passphrase typed there
    must not show, as getpass ensures; a plain read of stdin would echo it."""
    master, slave = pty.openpty()
    env = {key: value for key, value in os.environ.items() if key != cli_keys.PASSPHRASE_ENV}
    with subprocess.Popen(
        [sys.executable, "-m", "zmqcomm.cli.main", "keyinfo", str(protected_key)],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    ) as process:
        os.close(slave)
        try:
            time.sleep(0.5)  # until it reads (typed earlier, the line would echo anyway)
            os.write(master, b"s3cret\n")
            out, err = process.communicate(timeout=60)
            echoed = _read_until(master, b"s3cret", seconds=0.5)
        finally:
            os.close(master)
    assert process.returncode == EXIT_OK, err
    assert b"match the public keys" in out
    assert b"s3cret" not in echoed


def test_keyinfo_refuses_an_empty_passphrase_variable_as_keygen_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to be taken as unset and the passphrase asked for, hiding the mistake."""
    key_files.save_identity(Identity.generate("alice"), tmp_path, passphrase="pw")
    shown = _prompts(monkeypatch, "pw")
    monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, "")
    assert main(["keyinfo", str(tmp_path / "alice.key")]) == EXIT_USAGE
    assert shown == [] and "is set but empty" in capsys.readouterr().err


def _stdin_holding(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """No terminal, and ``data`` on stdin (then its end)."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    monkeypatch.setattr(sys, "stdin", open(read_end, encoding="utf-8"))  # noqa: SIM115
    monkeypatch.setattr(cli_keys, "_terminal_available", lambda: False)


def test_the_long_running_commands_ask_for_a_protected_keys_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """broker, send, pbft replica and the rest load their key through load_node_identity,
    which used to accept the passphrase only from the environment. On a terminal it asks;
    without one it takes the variable only."""
    alice = Identity.generate("alice")
    key_files.save_identity(alice, tmp_path, passphrase="pw")
    key = tmp_path / "alice.key"
    shown = _prompts(monkeypatch, "pw")
    assert load_node_identity(tmp_path, "alice").agent_id == alice.agent_id
    assert shown == [f"passphrase for {key}: "]
    monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, "pw")
    _stdin_holding(monkeypatch, b"")
    assert load_node_identity(tmp_path, "alice").agent_id == alice.agent_id


@pytest.mark.parametrize(
    ("variable", "stdin", "says"),
    [
        (None, b"", "there is no terminal to ask on"),
        (None, b"pw\n", "there is no terminal to ask on"),  # stdin is not read
        ("", b"pw\n", "is set but empty"),
        ("wrong", b"", "wrong passphrase"),
    ],
)
def test_a_protected_key_without_its_passphrase_is_a_usage_error_that_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str | None, stdin: bytes, says: str
) -> None:
    key_files.save_identity(Identity.generate("alice"), tmp_path, passphrase="pw")
    if variable is not None:
        monkeypatch.setenv(cli_keys.PASSPHRASE_ENV, variable)
    _stdin_holding(monkeypatch, stdin)
    with pytest.raises(UsageError, match=says) as caught:
        load_node_identity(tmp_path, "alice")
    if variable is None:
        assert cli_keys.PASSPHRASE_ENV in str(caught.value) and "alice.key" in str(caught.value)


def test_a_node_command_without_a_terminal_does_not_wait_on_a_silent_stdin(
    tmp_path: Path,
) -> None:
    """Found in review: with stdin a pipe that stays open and silent (a supervisor,
    ``ssh host cmd``), reading the passphrase from it waited for ever without a word."""
    key_files.save_identity(Identity.generate("agent"), tmp_path / "keys", passphrase="pw")
    (tmp_path / "trust").mkdir()
    env = {key: value for key, value in os.environ.items() if key != cli_keys.PASSPHRASE_ENV}
    command = [
        sys.executable, "-m", "zmqcomm", "sub", "t", "--broker", "tcp://127.0.0.1:1",
        "--keys", str(tmp_path / "keys"), "--trust", str(tmp_path / "trust"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,  # held open, never written to
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # no controlling terminal
    )
    try:
        process.wait(timeout=60)  # not communicate(): it would close stdin
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("the command waited on stdin for a passphrase")
    assert process.stdin is not None and process.stderr is not None
    process.stdin.close()
    err = process.stderr.read()
    process.stderr.close()
    assert process.returncode == EXIT_USAGE
    assert b"no terminal to ask on" in err and cli_keys.PASSPHRASE_ENV.encode() in err


def test_a_key_file_given_as_keys_says_which_directory_and_name_to_give(tmp_path: Path) -> None:
    """Found by a walkthrough: '--keys keys/alice.key' failed with 'no identity at
    keys/alice.key/agent.key', and 'zmqcomm keygen agent --dir keys/alice.key' as advice."""
    key_files.save_identity(Identity.generate("alice"), tmp_path)
    with pytest.raises(UsageError) as caught:
        load_node_identity(tmp_path / "alice.key", "agent")
    assert str(caught.value) == (
        f"--keys takes the directory that holds NAME.key, not a key file: for "
        f"{tmp_path / 'alice.key'} give --keys {tmp_path} --name alice"
    )
