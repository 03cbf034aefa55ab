"""The embedded CPU engine on the tiny ERNIE 4.5 model: KV cache, continuous batching, sampling, streaming.

The reference for every batched / cached result is the same request run alone, or one uncached
full-sequence forward: batching and caching must not change what a request produces.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ernie_ops.errors import UserError
from ernie_ops.serve.engine import Detokenizer, Engine, SamplingParams, sample

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog and then",
    "alpha",
    "User: reverse the list of words\nAssistant: ",
]


def greedy(max_tokens: int = 12, **kwargs) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kwargs)


@pytest.fixture(scope="module")
def engine(tiny_dense) -> Engine:
    eng = Engine.load(tiny_dense, max_batch_size=4, reference=True)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def alone(engine) -> list:
    """Each prompt's greedy result with nothing else in the batch."""
    return [engine.generate([p], greedy(16))[0] for p in PROMPTS]


def test_cached_batched_logits_equal_full_forward(engine):
    results = engine.generate(PROMPTS, greedy(10, return_logits=True))
    for r in results:
        full = engine.full_logits(r.prompt_token_ids + r.token_ids)
        start = len(r.prompt_token_ids) - 1  # the prefill's last row predicts the first new token
        cached = np.stack(r.logits)
        assert cached.shape == (len(r.token_ids), full.shape[1])
        np.testing.assert_allclose(cached, full[start : start + len(cached)], atol=1e-4, rtol=0)


def test_greedy_is_deterministic_and_batch_independent(engine, alone):
    again = engine.generate([PROMPTS[1]], greedy(16))[0]
    assert again.token_ids == alone[1].token_ids
    batched = engine.generate(PROMPTS, greedy(16))
    for a, b in zip(alone, batched, strict=True):
        assert b.token_ids == a.token_ids
        assert b.text == a.text
    assert len({tuple(r.token_ids) for r in batched}) > 1  # the prompts lead to different outputs


def test_request_joining_mid_way_matches_alone(engine, alone):
    first = [engine.submit(p, greedy(16)) for p in PROMPTS[:2]]
    for _ in range(5):  # the first two decode a few tokens before the others arrive
        engine.step()
    late = [engine.submit(p, greedy(16)) for p in PROMPTS[2:]]
    results = [h.result() for h in first + late]
    for a, r in zip(alone, results, strict=True):
        assert r.token_ids == a.token_ids


def test_long_decode_past_the_cache_capacity_matches_full_forward(engine):
    # the cache is preallocated with room for about half the prompt more; decoding 48 tokens after
    # a short prompt outgrows it (it is copied into a larger one) and must not change the logits
    results = engine.generate(PROMPTS[2:4], greedy(48, return_logits=True))
    for r in results:
        full = engine.full_logits(r.prompt_token_ids + r.token_ids)
        start = len(r.prompt_token_ids) - 1
        np.testing.assert_allclose(np.stack(r.logits), full[start : start + 48], atol=1e-4, rtol=0)


def test_a_long_prompt_prefilled_in_chunks_matches_full_forward(engine, alone, monkeypatch):
    # chunks of 5 tokens: the 11-token prompt takes three steps (5, 5, 1) before its first token
    monkeypatch.setattr(engine, "prefill_chunk", 5)
    r = engine.generate([PROMPTS[1]], greedy(16, return_logits=True))[0]
    assert len(r.prompt_token_ids) == 11
    full = engine.full_logits(r.prompt_token_ids + r.token_ids)
    start = len(r.prompt_token_ids) - 1
    np.testing.assert_allclose(np.stack(r.logits), full[start : start + 16], atol=1e-4, rtol=0)
    assert r.token_ids == alone[1].token_ids


def test_running_rows_keep_decoding_while_a_long_prompt_fills(engine, alone, monkeypatch):
    monkeypatch.setattr(engine, "prefill_chunk", 3)
    short = engine.submit(PROMPTS[2], greedy(16))  # "alpha": within one chunk, prefilled at once
    engine.step()
    long = engine.submit(PROMPTS[1], greedy(16))  # 11 tokens: four chunks (3, 3, 3, 2)
    produced, waited = [], []
    for _ in range(4):
        before = len(short._request.output)
        engine.step()
        produced.append(len(short._request.output) - before)
        waited.append(len(long._request.output))
    assert produced == [1, 1, 1, 1]  # one token per step for the running row, chunk after chunk
    # nothing until its last chunk; then its first token, and a second from the same step's decode
    assert waited == [0, 0, 0, 2]
    assert short.result().token_ids == alone[2].token_ids
    assert long.result().token_ids == alone[1].token_ids


def test_cancel_while_a_long_prompt_fills(engine, monkeypatch):
    monkeypatch.setattr(engine, "prefill_chunk", 3)
    handle = engine.submit(PROMPTS[1], greedy(16))
    engine.step()
    engine.cancel(handle.request_id)
    result = handle.result()
    assert (result.finish_reason, result.token_ids) == ("cancelled", [])
    assert not engine.has_work()


def test_rows_finishing_at_prefill_leave_the_others_exact(engine, alone):
    # prompts prefilled together; the ones done after their first token leave the group at once
    params = [greedy(1), greedy(16), greedy(1), greedy(16)]
    results = engine.generate(PROMPTS, params)
    for a, r, p in zip(alone, results, params, strict=True):
        assert r.token_ids == a.token_ids[: p.max_tokens]


def test_max_tokens_gives_length(engine):
    r = engine.generate(["Hello"], greedy(5))[0]
    assert r.finish_reason == "length"
    assert len(r.token_ids) == 5


def test_stop_string_ends_without_the_string(engine, alone):
    text = alone[1].text
    start = next(i for i in range(3, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]
    r = engine.generate([PROMPTS[1]], greedy(16, stop=[stop]))[0]
    assert r.finish_reason == "stop"
    assert stop not in r.text
    assert r.text == text[: text.find(stop)]


def test_stop_token_id_ends_generation(engine, alone):
    tokens = alone[0].token_ids
    stop_id = tokens[4]
    r = engine.generate([PROMPTS[0]], greedy(16, stop_token_ids=[stop_id]))[0]
    assert r.finish_reason == "stop"
    assert r.token_ids == tokens[: tokens.index(stop_id)]


def test_seeded_sampling_is_reproducible(engine):
    def params(seed: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=12, temperature=1.0, top_k=50, top_p=0.9, repetition_penalty=1.2, seed=seed
        )

    a, b, c = engine.generate([PROMPTS[0]] * 3, [params(1), params(1), params(2)])
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_cancel_stops_a_request(engine):
    engine.start()
    try:
        handle = engine.submit(PROMPTS[0], greedy(2000))
        other = engine.submit(PROMPTS[2], greedy(6))
        for seen, _ in enumerate(handle.stream(), start=1):
            if seen == 3:
                engine.cancel(handle.request_id)
        r = handle.result(timeout=30)
        assert r.finish_reason == "cancelled"
        assert len(r.token_ids) < 100
        assert other.result(timeout=30).finish_reason == "length"  # the batch goes on without it
    finally:
        engine.stop()


def test_requests_sent_together_to_an_idle_engine_share_one_prefill(engine, alone, monkeypatch):
    from ernie_ops.serve.engine import scheduler

    # a wide window: submits in a loop fall within it even on a loaded machine (no timing asserted)
    monkeypatch.setattr(scheduler, "GATHER_S", 0.5)
    monkeypatch.setattr(scheduler, "GATHER_MAX_S", 30.0)
    groups: list[int] = []
    prefill = engine._prefill

    def counted(group):
        groups.append(len(group))
        prefill(group)

    monkeypatch.setattr(engine, "_prefill", counted)
    engine.start()
    try:
        handles = [engine.submit(p, greedy(16)) for p in PROMPTS]  # a full batch: no wait after the last
        results = [h.result(timeout=60) for h in handles]
    finally:
        engine.stop()
    assert groups == [len(PROMPTS)]
    assert [r.token_ids for r in results] == [a.token_ids for a in alone]


def test_streamed_deltas_concatenate_to_the_text(engine, alone):
    text = alone[3].text
    stop = next(text[i : i + 3] for i in range(6, len(text) - 3) if "\ufffd" not in text[i : i + 3])
    params = [greedy(16), greedy(16, stop=[stop])]
    engine.start()  # submits from two threads while the engine thread steps
    try:
        out: dict[int, tuple[str, list, str | None, object]] = {}

        def client(i: int) -> None:
            handle = engine.submit(PROMPTS[3], params[i])
            deltas = list(handle.stream())
            joined = "".join(d.text for d in deltas)
            ids = [t for d in deltas for t in d.token_ids]
            out[i] = (joined, ids, deltas[-1].finish_reason, handle.result(timeout=30))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        engine.stop()
    for joined, ids, reason, result in out.values():
        assert joined == result.text
        assert ids == result.token_ids
        assert reason == result.finish_reason
    assert out[0][0] == text
    assert out[1][0] == text[: text.find(stop)] and out[1][2] == "stop"


def test_detokenizer_never_splits_a_character(engine):
    text = "é 你好, the quick brown fox"
    ids = engine.encode(text)
    assert len(ids) > len(text.split())  # byte-fallback pieces: characters span several ids
    detok = Detokenizer(engine.tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_sampling_rules():
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, SamplingParams(temperature=0), [], rng) == 1
    assert sample(logits, SamplingParams(temperature=5.0, top_k=1), [], rng) == 1
    assert {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), [], rng) for _ in range(50)} == {1}
    # a penalty of 2 halves token 1's logit (3 -> 1.5), so token 2 (2.0) becomes the greedy pick
    assert sample(logits, SamplingParams(temperature=0, repetition_penalty=2.0), [1], rng) == 2
    with pytest.raises(UserError):
        SamplingParams(top_p=0).check()


def test_moe_is_refused_with_the_reason(tiny_moe):
    with pytest.raises(UserError, match="MoE"):
        Engine.load(tiny_moe)
