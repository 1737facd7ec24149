"""`python -m ftops.serve.gateway --fd N`: the gateway's child process, uvicorn on a listening
socket its parent bound (ftops.serve.gateway.process.start)."""

from __future__ import annotations

import logging
import socket

from ftops.serve.gateway.app import app_from_env
from ftops.serve.gateway.process import GRACEFUL_S


def serve_fd(fd: int) -> None:
    """The child: uvicorn on the inherited socket; SIGTERM runs the graceful shutdown."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(app_from_env, factory=True, log_level="info", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_S, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The ftops gateway on an inherited socket (see `ftops gateway up`).")
    parser.add_argument("--fd", type=int, required=True, help="listening socket file descriptor")
    serve_fd(parser.parse_args(argv).fd)


if __name__ == "__main__":
    main()
