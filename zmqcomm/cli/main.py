"""Entry point of the ``zmqcomm`` command: sub-command dispatch and error presentation.

Exit codes: 0 success, 1 the operation failed, 2 bad usage (argparse's convention),
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from zmqcomm import __version__
from zmqcomm.cli import bench, broker, discovery, doctor, keys, messaging, pbft, swarm, trust
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.errors import UsageError, ZmqCommError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_COMMANDS = (swarm, broker, messaging, discovery, pbft, bench, keys, trust, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqcomm",
        description="Secure, fast messaging for agent swarms over ZeroMQ.",
        epilog="Run 'zmqcomm COMMAND --help' for the options and examples of each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zmqcomm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.register(commands)
    return parser


def _command(args: argparse.Namespace) -> str:
    """``zmqcomm pbft replica``, not just ``zmqcomm pbft``: whose words the error is."""
    action = getattr(args, f"{args.command}_command", None)
    return f"zmqcomm {args.command}" + (f" {action}" if action else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        print("zmqcomm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``zmqcomm keyinfo --json | head -1``): not an error of
        # ours. Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        print(f"{_command(args)}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ZmqCommError as exc:
        print(f"{_command(args)}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        # A file or directory the command had to create or read (--dir, --keep, --out,
        # --data): the system's own words name the path and what went wrong.
        print(
            f"{_command(args)}: error: {exc}; check the path and its permissions",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
