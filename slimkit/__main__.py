"""The ``slimkit`` command and ``python -m slimkit`` (and so ``torchrun -m slimkit``).

Importing the CLI imports torch, which takes seconds; Ctrl-C in that time must end
like any other interrupt (one line, exit 130), not with a traceback.
"""
import sys


def main() -> None:
    try:
        from slimkit import faults

        faults.point("start-up")
        from slimkit.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted during start-up; nothing was written\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
