"""``projector verify``'s comparison: copies at one offset, equal or different after re-asking; never settled."""

from __future__ import annotations

from projector.verify import CONFIRM, Copy, compare


def copies(*specs):
    """``(worker, role, offset, digest)`` tuples -> {0: [Copy]}."""
    return {0: [Copy(w, role, offset, 1, digest) for w, role, offset, digest in specs]}


def run(answers, partitions=1, timeout=10.0):
    """``compare`` over a list of answers (the last one repeats), on a fake clock: one second per round."""
    clock = [0.0]
    rounds = []

    def ask():
        rounds.append(1)
        return answers[min(len(rounds), len(answers)) - 1]

    def sleep(seconds):
        clock[0] += 1.0

    return compare(ask, partitions, timeout, sleep=sleep, clock=lambda: clock[0]), len(rounds)


def test_copies_at_one_offset_with_one_digest_are_equal():
    (verdict,), rounds = run([copies(("a", "active", 5, "x"), ("b", "standby", 5, "x"))])
    assert verdict.state == "equal" and rounds == 1
    assert verdict.line().startswith("partition 0: equal at offset 5")


def test_copies_at_different_offsets_are_asked_again_until_they_meet():
    (verdict,), rounds = run([copies(("a", "active", 7, "y"), ("b", "standby", 5, "x")),
                              copies(("a", "active", 7, "y"), ("b", "standby", 7, "y"))])
    assert verdict.state == "equal" and rounds == 2


def test_a_difference_is_confirmed_before_it_is_reported():
    (verdict,), rounds = run([copies(("a", "active", 5, "x"), ("b", "standby", 5, "z"))])
    assert verdict.state == "different" and rounds == CONFIRM
    line = verdict.line()
    assert line.startswith("partition 0: DIFFERENT at offset 5") and "b standby rows=1 digest=z" in line


def test_a_passing_difference_is_not_reported():
    (verdict,), _ = run([copies(("a", "active", 5, "x"), ("b", "standby", 5, "z")),
                         copies(("a", "active", 5, "x"), ("b", "standby", 5, "x"))])
    assert verdict.state == "equal"


def test_copies_that_never_meet_are_not_compared_and_a_partition_without_copies_is_said():
    (p0, p1), rounds = run([copies(("a", "active", 9, "x"), ("b", "standby", 5, "x"))], partitions=2, timeout=3)
    assert p0.state == "unsettled" and "NOT COMPARED" in p0.line() and "offset=5" in p0.line()
    assert p1.state == "unsettled" and "no worker holds a copy" in p1.line()
    assert rounds == 4


def test_a_worker_that_cannot_be_asked_is_exit_status_2_with_one_clear_line():
    from projector.runtime.config import Settings
    from projector.verify import verify

    lines = []
    status = verify(Settings(), "accounts", url="http://127.0.0.1:1", timeout=1, out=lines.append)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("projector verify: the worker at http://127.0.0.1:1 could not")
