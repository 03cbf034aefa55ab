"""The embedded CPU inference engine: ERNIE 4.5 with a KV cache and continuous batching.

It is the core the embedded OpenAI-compatible server stands on (the server is a separate module,
and reaches the engine through `serve/engine_client.py`). By concern:
- `scheduler.py`: `Engine`, the request lifecycle (submit, cancel, one scheduler step, the thread);
- `forward.py`: the forward that serves a checkpoint (numpy, with Paddle's matmul for several rows),
  its config and tokenizer loaded with ERNIEKit, ERNIEKit's own model as the tests' reference;
- `weights.py`: its weights, read from the safetensors files a tensor at a time;
- `kv_cache.py`: the running batch's left-padded KV cache layout;
- `request.py`: a request's state, its `Delta`s, `Result` and `RequestHandle`;
- `sampling.py`: `SamplingParams` and drawing a token from logits;
- `detokenizer.py`: token ids to streamed text, and stop strings.
"""

from ernie_ops.serve.engine.detokenizer import Detokenizer, StopMatcher
from ernie_ops.serve.engine.forward import DenseForward
from ernie_ops.serve.engine.request import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    Delta,
    RequestHandle,
    Result,
)
from ernie_ops.serve.engine.sampling import SamplingParams, sample
from ernie_ops.serve.engine.scheduler import PREFILL_CHUNK, PREFILL_TOKENS, Engine

__all__ = [
    "FINISH_CANCELLED",
    "FINISH_ERROR",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "PREFILL_CHUNK",
    "PREFILL_TOKENS",
    "Delta",
    "DenseForward",
    "Detokenizer",
    "Engine",
    "RequestHandle",
    "Result",
    "SamplingParams",
    "StopMatcher",
    "sample",
]
