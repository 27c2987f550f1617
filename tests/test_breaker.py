"""The circuit breaker: systematic failure stops a run with the reason and a fix."""

from __future__ import annotations

import pytest

from harness.breaker import CircuitBreaker, SystematicFailure
from harness.stages import VideoResult


def ok(i: int) -> VideoResult:
    return VideoResult(i, f"v{i}.mp4", 0, "ok")


def failed(i: int, reason: str = "missing") -> VideoResult:
    return VideoResult(i, f"v{i}.mp4", 0, "failed", reason, f"v{i}.mp4: {reason}")


def test_all_of_the_first_window_failing_stops_with_the_likely_fix():
    breaker = CircuitBreaker(window=50, max_rate=0.5)
    for i in range(49):
        breaker.observe(failed(i))                            # not yet: 49 < 50
    with pytest.raises(SystematicFailure) as info:
        breaker.observe(failed(49))
    message = str(info.value)
    assert "50 of 50 videos failed (all of the first 50)" in message
    assert "'missing' (50; e.g. v0.mp4)" in message          # the first path that was not found
    assert "check --data-prefix" in message
    # none was scored: this work dir accepts the corrected command (harness.results)
    assert "run the corrected command (--data-prefix or the list): this work dir accepts it" in message


def test_a_rate_of_1_never_stops():
    breaker = CircuitBreaker(window=50, max_rate=1.0)
    for i in range(500):
        breaker.observe(failed(i))


@pytest.mark.parametrize("reasons, advice", [
    (["missing"] * 5 + [None] * 3, "the corrected command with --overwrite"),   # some scored
    (["read error"] * 8, "the same command resumes and retries these videos"),
    (["timeout"] * 8, "the same command resumes and retries these videos"),
    (["empty"] * 8, "add --retry-failed to retry these videos"),
    (["permission denied"] * 8, "add --retry-failed"),
    # a wrong folder can give these too: the corrected command is accepted while none was scored
    (["unreadable container"] * 8, "a corrected --data-prefix or list is accepted too"),
    (["unreadable container"] * 6 + [None] * 2, "a corrected --data-prefix or list needs --overwrite"),
])
def test_the_advice_says_what_to_run_once_fixed(reasons, advice):
    breaker = CircuitBreaker(window=8, max_rate=0.5)
    with pytest.raises(SystematicFailure) as info:
        for i, reason in enumerate(reasons):
            breaker.observe(ok(i) if reason is None else failed(i, reason))
    assert advice in str(info.value), str(info.value)
    assert "--max-failure-rate 1 never stops" in str(info.value)


def test_a_work_dir_scored_before_this_run_needs_overwrite_for_a_corrected_location():
    # a resume whose earlier invocation scored videos: prepare_work_dir refuses a changed prefix
    breaker = CircuitBreaker(window=4, max_rate=0.5, scored_before=True)
    with pytest.raises(SystematicFailure) as info:
        for i in range(4):
            breaker.observe(failed(i))
    assert "run the corrected command with --overwrite" in str(info.value)
    assert "this work dir accepts it" not in str(info.value)


def test_a_few_broken_files_never_stop_a_run():
    breaker = CircuitBreaker(window=50, max_rate=0.5)
    for i in range(1000):
        breaker.observe(failed(i, "empty") if i % 20 == 0 else ok(i))   # 5% broken


def test_more_than_the_rate_after_the_window_stops_naming_the_dominant_reason():
    breaker = CircuitBreaker(window=10, max_rate=0.5)
    results = [ok(i) for i in range(5)] + [failed(i, "timeout") for i in range(5, 10)]
    for r in results:                                          # 5 of 10: not more than half
        breaker.observe(r)
    with pytest.raises(SystematicFailure, match="6 of 11.*more than 50%.*'timeout' \\(6; e.g. v5.mp4\\).*stalled"):
        breaker.observe(failed(10, "timeout"))


def test_a_short_list_is_judged_at_its_own_length():
    breaker = CircuitBreaker(window=3, max_rate=0.5)
    breaker.observe(failed(0, "inference failed"))
    breaker.observe(failed(1, "inference failed"))
    with pytest.raises(SystematicFailure, match="3 of 3.*session"):
        breaker.observe(failed(2, "inference failed"))
