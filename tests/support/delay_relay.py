"""A TCP relay that holds every chunk back by a fixed delay in each direction.

    python -m tests.support.delay_relay --listen 10.200.1.1:41000 --target 127.0.0.1:5432 \
        --delay-ms 20

It stands in for ``tc qdisc … netem delay`` where the kernel has no sch_netem:
bytes keep their order, and each direction is late by ``--delay-ms`` (as netem
on both ends of a link). Runs until killed; one connection's trouble ends only
that connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

CHUNK = 65536
QUEUED = 1024
"""Chunks held per direction at most: a fast sender waits instead of filling memory."""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED)

    async def feed() -> None:
        while chunk := await reader.read(CHUNK):
            await held.put((loop.time() + delay, chunk))
        await held.put((loop.time() + delay, b""))

    async def send() -> None:
        while True:
            due, chunk = await held.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not chunk:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    jobs = [asyncio.create_task(feed()), asyncio.create_task(send())]
    try:
        await asyncio.gather(*jobs)
    except (OSError, ConnectionError):
        pass  # the peer went away: this direction ends
    finally:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


async def _serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (OSError, TimeoutError):
            client_w.close()
            return
        try:
            await asyncio.gather(_pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay))
        finally:
            for w in (client_w, server_w):
                w.close()

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--target", type=_address, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.listen, args.target, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
