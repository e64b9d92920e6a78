"""The servers of the HTTP benchmark, each run in a process of its own.

``python -m benchmarks.http_servers KIND [options]`` binds 127.0.0.1 on a free port (or
``--port``), prints ``listening PORT`` on stdout once it accepts connections (and, for ``ours``,
once every replica is ready), and serves until SIGTERM.

* ``ours``: ``serve`` with ``--replicas`` mock runners (no delay); ``--reuse-port`` binds with
  ``SO_REUSEPORT`` (``[server] reuse_port``), so that several such processes share one port;
  ``--front URL`` makes the replicas ``RemoteRunner``s in front of the server at URL;
  ``--profile PATH`` writes cProfile statistics on SIGTERM.
* ``hypercorn``: a minimal ASGI app on the same stack (hypercorn on Trio) that answers the same
  bytes with no worker behind it: for each request it reads the body and sends ``max_tokens``
  SSE events (encoded once, at start-up) and ``[DONE]``, or one JSON body. The stack's ceiling.
* ``uvicorn``: the same app on uvicorn (asyncio; uvloop and httptools when installed, as
  ``uvicorn[standard]`` brings them): the reference a user would compare with.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

__all__ = ["MinimalApp", "main", "ours_config"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

WORDS = ("the", "model", "runs", "on", "trio")


def _completion(index: int, text: str, finish: str | None, usage: bool) -> dict[str, Any]:
    """The shape of one of our completion objects (what the server under test sends)."""
    body: dict[str, Any] = {
        "id": "cmpl-0123456789abcdef01234567",
        "object": "text_completion",
        "created": int(time.time()),
        "model": "mock",
        "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
             "token_ids": [10_000 + index]}
        ],
    }  # fmt: skip
    if usage:
        body["usage"] = {"prompt_tokens": 1, "completion_tokens": index + 1,
                         "total_tokens": index + 2}  # fmt: skip
    return body


class MinimalApp:
    """The same responses as ours with nothing behind them (see the module docstring)."""

    SSE_HEADERS: ClassVar = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
    ]
    JSON_HEADERS: ClassVar = [(b"content-type", b"application/json")]

    def __init__(self) -> None:
        self._events: dict[int, list[bytes]] = {}
        self._bodies: dict[int, bytes] = {}

    def events(self, max_tokens: int) -> list[bytes]:
        """The SSE events (and ``[DONE]``) of a streamed answer of ``max_tokens`` tokens."""
        if max_tokens not in self._events:
            last = max_tokens - 1
            objects = [
                _completion(i, WORDS[i % 5] + " ", "length" if i == last else None, i == last)
                for i in range(max_tokens)
            ]
            self._events[max_tokens] = [
                b"data: " + json.dumps(o).encode() + b"\n\n" for o in objects
            ] + [b"data: [DONE]\n\n"]
            text = "".join(WORDS[i % 5] + " " for i in range(max_tokens))
            self._bodies[max_tokens] = json.dumps(_completion(last, text, "length", True)).encode()
        return self._events[max_tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        fields = json.loads(body)
        max_tokens = int(fields.get("max_tokens", 16))
        events = self.events(max_tokens)
        if not fields.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.JSON_HEADERS})  # fmt: skip
            await send({"type": "http.response.body", "body": self._bodies[max_tokens]})
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.SSE_HEADERS})
        for event in events[:-1]:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": events[-1]})


def _listening(port: int) -> None:
    print(f"listening {port}", flush=True)


def _serve_hypercorn() -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.backlog = 1024

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            stop = trio.Event()
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for _ in signals:
                        stop.set()
                        return

                nursery.start_soon(on_signal)
                binds = await nursery.start(
                    lambda task_status: serve(MinimalApp(), config,  # type: ignore[arg-type]
                                              shutdown_trigger=stop.wait, task_status=task_status)
                )  # fmt: skip
                _listening(int(binds[0].rpartition(":")[2]))
                await stop.wait()
                nursery.cancel_scope.cancel()

    trio.run(run)


def _serve_uvicorn() -> None:
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(MinimalApp(), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    _listening(sock.getsockname()[1])
    server.run(sockets=[sock])


def ours_config(
    replicas: int, *, port: int = 0, reuse_port: bool = False, front: str | None = None
) -> dict[str, Any]:
    """Our server's config: ``replicas`` mock runners (no delay), or with ``front`` as many
    ``RemoteRunner`` replicas in front of the server at that URL."""
    worker: dict[str, Any] = {
        "name": "mock",
        "runner": "trio_supervise.runners.mock:MockRunner",
        "runner_args": {"delay": 0.0},
        "device": "cpu",
        "replicas": replicas,
    }
    if front is not None:
        worker = {
            "name": "mock",
            "runner": "trio_supervise.runners.remote:RemoteRunner",
            "runner_args": {"base_url": front, "model": "mock", "max_connections": 256},
            "replicas": replicas,
        }
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "drain_timeout": 5,
            "reuse_port": reuse_port,
        },
        "workers": [worker],
    }


def _serve_ours(config_data: dict[str, Any], profile: str | None) -> None:
    import trio

    from trio_supervise.serve import ServeConfig
    from trio_supervise.serve.server import ServerHandle, serve

    config = ServeConfig.from_dict(config_data)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(
                lambda task_status: serve(config, handle_signals=True, task_status=task_status)
            )
            _listening(handle.address[1])

    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        trio.run(run)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_servers", description=__doc__)
    parser.add_argument("kind", choices=["ours", "hypercorn", "uvicorn"])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="ours: the port (0: a free one)")
    parser.add_argument("--reuse-port", action="store_true", help="ours: bind with SO_REUSEPORT")
    parser.add_argument(
        "--front", default=None, metavar="URL", help="ours: RemoteRunner replicas in front of URL"
    )
    parser.add_argument("--profile", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.kind == "ours":
        config = ours_config(args.replicas, port=args.port, reuse_port=args.reuse_port,
                             front=args.front)  # fmt: skip
        _serve_ours(config, args.profile)
    elif args.kind == "hypercorn":
        _serve_hypercorn()
    else:
        _serve_uvicorn()


if __name__ == "__main__":
    main(sys.argv[1:])
