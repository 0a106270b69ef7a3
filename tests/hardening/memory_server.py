"""A bridge over the in-memory backend in a process of its own, for the memory-bound test.

Run as `python -m tests.hardening.memory_server --port N`. The memory test reads the server's
resident memory from /proc, which only means something when the server is alone in its
process. Users `alice` and `bob` (password `secret`) each have
one message of `--size` octets; the bridge listens on 127.0.0.1:`--port` until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from devkit.memory_backend import MemoryBackend
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.frontend.server import Pop3Server
from popbridge.session.session import Services
from popbridge.session.throttle import Throttle, ThrottlePolicy


def message(size: int) -> bytes:
    """A message of exactly `size` octets (CRLF lines, no dot-stuffing needed)."""
    head = b"Subject: flood\r\n\r\n"
    lines = (b"x" * 78 + b"\r\n") * ((size - len(head)) // 80)
    return head + lines + b"y" * (size - len(head) - len(lines))


async def serve(port: int, size: int) -> None:
    backend = MemoryBackend()
    for user in ("alice", "bob"):
        backend.user(user, "secret", message(size)).chunk_size = 65536
    config = Config(
        source="memory_server",
        backend_type="memory",
        listeners=(ListenerConfig(host="127.0.0.1", port=port, plaintext_auth=True),),
        server=ServerConfig(throttle=ThrottlePolicy(base_delay=0)),
    )
    server = Pop3Server(
        config, Services(backend=backend, throttle=Throttle(config.server.throttle))
    )
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=10240)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.port, args.size))


if __name__ == "__main__":
    main()
