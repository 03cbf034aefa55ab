"""The optional dependencies (setup.py's extras) and the one way to import them.

`with optional_imports("cpu", "building the tiny model"): import paddle ...` turns a missing
module, the package itself or one it needs (protobuf's `google` for sentencepiece's model file),
into a UserError that names the extra to install, instead of a traceback. It also keeps the
import-time noise of these stacks off the user's screen: Paddle's and setuptools' UserWarnings,
and transformers' "None of PyTorch, TensorFlow >= 2.0, or Flax have been found" advisory, which
PaddleFormers triggers by importing transformers' tokenizer code (this toolkit runs on Paddle, so
the advisory is always true and never useful). Real warnings logged later still show.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from ernie_ops.errors import UserError

EXTRAS = {
    "cpu": "PaddlePaddle, ERNIEKit and PaddleFormers",
    "serve": "FastAPI, uvicorn, httpx and prometheus-client",
}


@contextlib.contextmanager
def optional_imports(extra: str, needed_for: str) -> Iterator[None]:
    """Import the packages of `extra` inside this block (imports only: any ImportError is read as
    "not installed"). `needed_for` says what the user asked for, e.g. "building the tiny model"."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    hide_framework_advisory()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImportError as err:
        raise UserError(
            f"{needed_for} needs the `{extra}` extra ({EXTRAS[extra]}), which is not installed here: {err}",
            hint=f'in the ernie-ops checkout: pip install -c constraints.txt -e ".[{extra}]" '
            "(scripts/setup.sh installs every extra; on a GPU node: scripts/setup_gpu.sh)",
        ) from err


class _FrameworkAdvisory(logging.Filter):
    """Drops transformers' "None of PyTorch, TensorFlow >= 2.0, or Flax have been found" line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("None of PyTorch, TensorFlow")


_ADVISORY = _FrameworkAdvisory()


def hide_framework_advisory() -> None:
    # transformers logs it once, at import, on its package logger (which keeps its filters)
    logging.getLogger("transformers").addFilter(_ADVISORY)  # a no-op when already added
