"""Carrying a candidate model into traffic and out again (issue #19).

- `routing`: the gateway's routing state (mode, candidate weight), the sticky split and the state
  file that a restarted gateway continues from.
- `gateway`: the OpenAI-compatible front for a stable and a candidate endpoint (aiohttp).
- `answers`: what a backend answered (text, finish reason, tool calls, tokens) read from a streamed
  or whole reply, and the shadow comparison.
- `metrics`: the gateway's Prometheus metrics, per backend.
- `requestlog`: the JSONL request log (rotated by size and day, retention period).
- `review`, `judge`: the review queue of wrong-looking answers, and the eval-suite judge that flags them.
- `top`: live per-backend figures from Prometheus scrapes (`ernie-ops top`).
- `spec`, `controller`: ROLLOUT.yaml and the controller that steps through its stages behind a router.
- `haproxy`: the router over HAProxy's runtime API (weights, counters, httplog p99s).
- `suitegates`: gates that send an eval suite to both models (judged agreement, eval re-run).
- `report`: the rollout report (Markdown, HTML, weight timeline).
- `acceptance`: the end-to-end scenario (`scripts/rollout_e2e.py` and its test).
"""
