"""`ingot`: one command for the gateway and stack (server), engine builds (engines), benchmarks."""
from __future__ import annotations

import sys

SUBSYSTEMS = {
    "build": "engines.cli", "plan": "engines.cli", "push": "engines.cli", "pull": "engines.cli",
    "validate": "engines.cli", "bench": "benchmarks.cli",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBSYSTEMS:
        module = __import__(SUBSYSTEMS[argv[0]], fromlist=["main"])
        rest = argv[1:] if argv[0] == "bench" else argv
        return module.main(rest)
    from server.cli import main as server_main

    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
