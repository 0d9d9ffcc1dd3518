"""`ingot` command: one entry point that dispatches to the gateway, build and bench commands."""
import sys


def main() -> None:
    from server.cli import main as cli_main

    sys.exit(cli_main())
