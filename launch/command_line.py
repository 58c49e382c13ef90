"""What every launcher takes: --dry_run, and the command to run after `--`."""
from __future__ import annotations

import argparse


def add_command(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dry_run", action="store_true", help="print what would run, run nothing")
  parser.add_argument("command", nargs=argparse.REMAINDER)


def command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
  """The words after `--`; a usage error (exit status 2) when there are none."""
  words = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not words:
    parser.error("give the command after --, e.g. -- python -m sorajax.train --config ...")
  return words
