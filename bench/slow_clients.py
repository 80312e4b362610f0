"""Hostile connections for bench/slow-clients.sh: keeps HALF_OPEN connections
that sent half a request line and SLOW_BODY connections that sent their
headers and then trickle one body byte a second, each reopened as soon as
the server closes it (as an attacker would). Runs until SIGTERM or SIGINT,
then prints how many connections it opened and how many the server closed.

    python3 bench/slow_clients.py PORT HALF_OPEN SLOW_BODY
"""

import asyncio
import signal
import sys

HALF = b"POST /predict_sync HTT"
HEADERS = (
    b"POST /predict_sync HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"content-length: 100000\r\n\r\n{\"value\": \""
)

opened = 0
closed_by_server = 0


async def hold(port: int, first: bytes, trickle: bool, stop: asyncio.Event) -> None:
    global opened, closed_by_server
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        opened += 1
        try:
            writer.write(first)
            await writer.drain()
            while not stop.is_set():
                if trickle:
                    writer.write(b"1")
                    await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    closed_by_server += 1
                    break
        except OSError:
            closed_by_server += 1
        finally:
            writer.close()


async def main() -> None:
    port, half_open, slow_body = (int(arg) for arg in sys.argv[1:4])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(hold(port, HALF, False, stop)) for _ in range(half_open)]
    tasks += [asyncio.create_task(hold(port, HEADERS, True, stop)) for _ in range(slow_body)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"opened {opened} closed_by_server {closed_by_server}", flush=True)


asyncio.run(main())
