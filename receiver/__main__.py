"""`python -m receiver [uvicorn options]`: the receiver as production runs it.

The same as `uvicorn receiver.app:app` with the edge's options below, which the options given
after it override (e.g. `--host`, `--port`, `--workers`, `--proxy-headers`). The Makefile's
`run`, the README's production command and the tests all start it this way; the equivalent
plain command is printed by `python -m receiver --print-command`.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from uvicorn.main import main as uvicorn_main

# Why each value: README.md, "Production deployment" (the receiver's edge).
EDGE_OPTIONS = (
    "--http", "receiver.edge:EdgeProtocol",  # header size limit and read timeouts
    "--ws", "none",  # no websocket upgrade on a webhook endpoint
    "--limit-concurrency", "512",  # connections (or requests in progress) per worker
    "--backlog", "512",  # connections waiting to be accepted
    "--timeout-keep-alive", "5",  # an idle kept-alive connection is closed after this
    "--no-server-header",
)  # fmt: skip
APP = "receiver.app:app"


def command(args: Sequence[str] = ()) -> list[str]:
    return ["uvicorn", APP, *EDGE_OPTIONS, *args]


def main(args: Sequence[str] | None = None) -> None:
    given = list(sys.argv[1:] if args is None else args)
    if given[:1] == ["--print-command"]:
        print(shlex.join(command(given[1:])))
        return
    uvicorn_main.main(args=[APP, *EDGE_OPTIONS, *given], prog_name="python -m receiver")


if __name__ == "__main__":
    main()
