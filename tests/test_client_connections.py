"""The client's handling of kept-alive connections a server closed between requests.

llama-server closes a kept-alive connection after a stream now and then; any server may at its
idle timeout. A request that found its pooled connection closed got no answer and is sent again on
a new one; a request on a new connection that the server drops is an error, never sent twice.
"""

from __future__ import annotations

import asyncio

import orjson

from ernie_ops.validate.client import Endpoint, request, session

_ANSWER = orjson.dumps({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})


class DroppingServer:
    """Answers HTTP/1.1 with keep-alive; drops (closes unanswered) the requests `drop` picks.

    `drop(n)` gets the request's number on its connection (1 = the connection's first request).
    """

    def __init__(self, drop) -> None:
        self.drop = drop
        self.requests = 0
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        on_this = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                on_this += 1
                if self.drop(on_this):
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(_ANSWER), _ANSWER)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _run(server: DroppingServer, n: int):
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    endpoint = Endpoint.parse(f"http://127.0.0.1:{port}", model="m")
    try:
        async with session(endpoint, concurrency=1) as client:
            return [await request(client, endpoint, {"messages": []}) for _ in range(n)]
    finally:
        listener.close()
        await listener.wait_closed()


def test_a_request_on_a_closed_kept_alive_connection_is_sent_again():
    server = DroppingServer(drop=lambda on_this: on_this > 1)  # every reused connection is stale
    replies = asyncio.run(_run(server, 3))
    assert [(r.status, r.text, r.error) for r in replies] == [(200, "ok", None)] * 3
    # requests 2 and 3 each went out twice: once on the stale connection, once on a new one
    assert (server.requests, server.connections) == (5, 3)


def test_a_request_dropped_on_a_new_connection_is_not_sent_twice():
    server = DroppingServer(drop=lambda on_this: True)
    [reply] = asyncio.run(_run(server, 1))
    assert reply.status == 0 and "disconnected" in (reply.error or "")
    assert (server.requests, server.connections) == (1, 1)
