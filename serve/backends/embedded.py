"""The embedded CPU server (`engine: paddle`): the checkpoint loaded by ERNIEKit in Paddle behind
our FastAPI OpenAI-compatible server (`serve/openai_server.py`, started as `python -m`)."""

from __future__ import annotations

import os
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
    serves = (
        "dense ERNIE 4.5 text checkpoints on CPU, ERNIEKit's exact arithmetic, or FastDeploy's "
        "wint8 / wint4 emulated (their quality, not their speed)"
    )
    priority = 90  # the fallback: runs wherever Paddle does
    default_host = "127.0.0.1"  # no TLS: this machine only unless the profile says otherwise
    api_key_env = "ERNIE_OPS_API_KEY"

    def command(
        self, profile: ServeProfile, target: Target | None = None, python: str | None = None
    ) -> Command:
        from ernie_ops.errors import UserError
        from ernie_ops.serve.profile import api_key, embedded_quantization_problem

        # the profile check needs `engine: paddle`; a profile without engine lands here on a CPU
        problem = embedded_quantization_problem(profile.quantization)
        if problem:
            raise UserError(problem[0], hint=problem[1])
        argv = [
            *self.python_server(MODULE, profile, target, python),
            "--max-batch-size",
            str(profile.max_num_seqs),
        ]
        if profile.quantization != "bf16":  # wint8 / wint4
            argv += ["--quantization", str(profile.quantization)]
        if profile.served_model_name:
            argv += ["--served-model-name", profile.served_model_name]
        if profile.chat_template:
            argv += ["--chat-template", str(Path(profile.chat_template).expanduser())]
        if profile.max_request_mb is not None:
            argv += ["--max-request-mb", str(profile.max_request_mb)]
        # ERNIEKit's tokenizer pulls in transformers through paddleformers, and with it torch (200 MiB
        # of the load peak) unless told not to; the engine itself needs neither. A user's choice stays.
        env = {} if "USE_TORCH" in os.environ else {"USE_TORCH": "0"}
        key = api_key(profile) if target is not None else None  # read only to start, never to show
        if key:
            env["ERNIE_OPS_API_KEY"] = key  # the environment, never the command line
        return Command(argv, env)


BACKEND = Embedded()
