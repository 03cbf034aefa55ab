"""Carrying a candidate model into traffic and out again (issue #19).

- `routing`: the gateway's routing state (mode, candidate weight), the sticky split and the state
  file that a restarted gateway continues from.
- `gateway`: the OpenAI-compatible front for a stable and a candidate endpoint (aiohttp).
- `answers`: what a backend answered (text, finish reason, tool calls, tokens) read from a streamed
  or whole reply, and the shadow comparison.
- `metrics`: the gateway's Prometheus metrics, per backend.
- `requestlog`: the JSONL request log (rotated by size and day, retention period).
"""
