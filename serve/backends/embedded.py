"""The embedded CPU server (`engine: paddle`): the checkpoint loaded by ERNIEKit in Paddle behind
our FastAPI OpenAI-compatible server (`serve/openai_server.py`, started as `python -m`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ernie_ops.serve.backends.base import Backend, Command

if TYPE_CHECKING:
    from ernie_ops.serve.preflight import Target
    from ernie_ops.serve.profile import ServeProfile

MODULE = "ernie_ops.serve.openai_server"


class Embedded(Backend):
    name = "paddle"
    title = "the embedded CPU server"
    described = "the embedded CPU backend"
    serves = "ERNIE 4.5 text checkpoints (dense and MoE) on CPU, ERNIEKit's exact arithmetic"
    priority = 90  # the fallback: runs wherever Paddle does
    default_host = "127.0.0.1"  # no TLS: this machine only unless the profile says otherwise
    api_key_env = "ERNIE_OPS_API_KEY"

    def command(
        self, profile: ServeProfile, target: Target | None = None, python: str | None = None
    ) -> Command:
        from ernie_ops.serve.profile import api_key

        argv = [
            *self.python_server(MODULE, profile, target, python),
            "--max-batch-size",
            str(profile.max_num_seqs),
        ]
        if profile.served_model_name:
            argv += ["--served-model-name", profile.served_model_name]
        if profile.chat_template:
            argv += ["--chat-template", str(Path(profile.chat_template).expanduser())]
        if profile.max_request_mb is not None:
            argv += ["--max-request-mb", str(profile.max_request_mb)]
        env = {}
        key = api_key(profile) if target is not None else None  # read only to start, never to show
        if key:
            env["ERNIE_OPS_API_KEY"] = key  # the environment, never the command line
        return Command(argv, env)


BACKEND = Embedded()
