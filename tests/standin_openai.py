"""A scripted stand-in OpenAI server: it answers each prompt with the text a test gave it.

Keyed by the last user message (`prompt_key`: its text and images), so a test can build a "perfect" server
from a suite's expected answers, or a known-wrong one, and assert scores exactly. Streams when
asked (one chunk per word), reports usage, and answers an unknown prompt with `default`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def prompt_key(messages: list[dict]) -> str:
    """The last user message (text and images), as the key of the answer to give."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return json.dumps(message.get("content"), sort_keys=True)
    return ""


def create_standin(
    answers: dict[str, str],
    model: str = "standin",
    default: str = "I do not know.",
    fail: frozenset[str] = frozenset(),
) -> FastAPI:
    """`answers`: prompt key -> answer; prompts whose key is in `fail` get an HTTP 500."""
    app = FastAPI()
    app.state.requests = []  # every request body, for assertions

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model", "max_model_len": 1024}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append(body)
        if body.get("model") != model:
            return JSONResponse({"error": {"message": f"no model {body.get('model')}"}}, status_code=404)
        key = prompt_key(body.get("messages", []))
        if key in fail:
            return JSONResponse(
                {"error": {"message": "scripted failure", "type": "server_error"}}, status_code=500
            )
        answer = answers.get(key, default)
        usage = {"prompt_tokens": 10, "completion_tokens": len(answer.split()), "total_tokens": 0}
        if not body.get("stream"):
            message = {"role": "assistant", "content": answer}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }

        def events() -> Iterator[str]:
            words = answer.split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                yield f"data: {json.dumps({'id': 'c', 'choices': [choice]})}\n\n"
            done = {
                "id": "c",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": usage,
            }
            yield f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextlib.contextmanager
def serving(app, graceful_s: float = 5.0) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run `app` with uvicorn on a free loopback port in a thread; yields (base URL, server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
