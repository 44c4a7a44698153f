"""Shared CLI plumbing: one-line errors instead of tracebacks."""

import logging
import os
import sys
from typing import Callable, List, Optional

from nmt_sd.errors import NmtSdError


def setup_logging() -> None:
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stdout,
    )


def run_cli(prog: str, main: Callable[[Optional[List[str]]], None], argv=None) -> None:
    """Run ``main(argv)``; user errors end in one line on stderr and exit code 2."""
    setup_logging()
    try:
        main(argv)
    except NmtSdError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


def check_file(path: str, what: str = "file") -> str:
    """Return ``path`` if it is a readable file, else raise a one-line NmtSdError."""
    if not os.path.exists(path):
        raise NmtSdError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise NmtSdError(f"{what} is not a file: {path}")
    return path


def read_lines(path: str, what: str = "file") -> List[str]:
    """Read a UTF-8 text file as lines (no trailing newline); bad UTF-8 names file and line."""
    check_file(path, what)
    lines = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise NmtSdError(
                    f"{path}:{i}: invalid UTF-8 ({e.reason} at byte {e.start})"
                )
    return lines
