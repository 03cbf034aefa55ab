"""Issue #19's acceptance end to end on CPU: two embedded servers on the tiny model, the gateway (and
HAProxy), a steady `ernie-ops bench` load and the controller (`ernie_ops.rollout.acceptance`, the
same scenario as scripts/rollout_e2e.py).

A good candidate is promoted through every stage; one that errors, one slower than the SLO and one
whose answers disagree (another seed of the tiny model) are rolled back at the first gate they
fail. Every client request is answered (bench's count: 0 failed, 0 lost); all-stable is in effect
within a second of the failing figures, by the gateway's own clock; and no client request reaches
the candidate after it (the gateway's request log)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ernie_ops.rollout.acceptance import candidates, run_case

pytestmark = pytest.mark.slow

SUITE = Path(__file__).resolve().parent.parent / "recipes" / "rollouts" / "suites" / "rollout-agreement.jsonl"
RATE = 10.0
DURATION = {"good": 9.0, "errors": 5.0, "slow": 6.0, "disagrees": 5.0}  # seconds of load
FIRST_GATE = {"errors": "error rate", "slow": "TTFT p99", "disagrees": "agreement with stable"}


@pytest.fixture(scope="module")
def models(tiny_dense, tmp_path_factory) -> Iterator[dict[str, str]]:
    from ernie_ops.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("rollout-e2e")
    other = build_tiny_model(root / "tiny-seed-1", kind="dense", seed=1)
    with candidates(tiny_dense, other, root / "logs", ("good", "errors", "slow", "disagrees")) as urls:
        yield urls


def check(outcome, case: str) -> None:
    print(outcome)
    assert outcome.client_requests >= RATE * DURATION[case] * 0.5
    assert outcome.client_failed == 0
    if case == "good":
        assert outcome.status == "promoted", outcome.reason
        return
    assert outcome.status == "rolled_back"
    assert outcome.failed_stage in ("shadow", "split 10%")  # the first stage
    assert FIRST_GATE[case] in outcome.reason
    assert outcome.rollback_s is not None and outcome.rollback_s < 1.0
    assert outcome.candidate_after_rollback == 0


@pytest.mark.parametrize("case", ["good", "errors", "slow", "disagrees"])
def test_the_acceptance_scenario_through_the_gateway(case, models, tmp_path):
    outcome = run_case("gateway", case, models["stable"], models[case], tmp_path, RATE, DURATION[case], None)
    check(outcome, case)
    assert (tmp_path / "rollout.html").is_file()


@pytest.mark.parametrize("case", ["good", "disagrees"])
def test_the_acceptance_scenario_through_haproxy_with_a_judged_agreement(case, models, tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (tests/test_rollout_haproxy.py installs it)")
    outcome = run_case("haproxy", case, models["stable"], models[case], tmp_path, RATE, 12.0, SUITE)
    check(outcome, case)
