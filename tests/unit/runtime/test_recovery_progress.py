"""Recovery progress: records left, rate and ETA per partition, from Faust's recovery offsets."""

import logging
from collections import Counter

from faust.types import TP

from projector.runtime.recovery import RecoveryProgress

A = TP("app-accounts-changelog", 0)
B = TP("app-accounts-changelog", 1)


class FakeRecovery:
    def __init__(self):
        self.active = Counter()
        self.standby = Counter()
        self.in_recovery = True

    def active_remaining(self):
        return self.active

    def standby_remaining(self):
        return self.standby


def test_rate_eta_and_restored_total_follow_the_remaining_records(caplog):
    r = FakeRecovery()
    r.active[A] = 1000
    r.standby[B] = 50
    progress = RecoveryProgress(r)

    class Table:
        applied = []

        def apply_changelog_batch(self, batch):
            self.applied.extend(batch)

    table = Table()
    progress.count(table)
    progress.sample(now=100.0)
    assert progress.restored_total == 0
    first = {(p.kind, p.partition): p for p in progress.partitions}
    assert first[("active", 0)].remaining == 1000 and first[("active", 0)].eta_seconds is None
    r.active[A] = 600
    r.standby[B] = 0
    table.apply_changelog_batch(iter(range(450)))
    progress.sample(now=102.0)
    by = {(p.kind, p.partition): p for p in progress.partitions}
    assert by[("active", 0)].rate == 200.0
    assert by[("active", 0)].eta_seconds == 3.0
    assert by[("standby", 1)].remaining == 0 and by[("standby", 1)].eta_seconds == 0.0
    assert progress.restored_total == 450 and len(Table.applied) == 450
    assert progress.rate == 225.0
    with caplog.at_level(logging.INFO, logger="projector.runtime.recovery"):
        progress.log_progress(now=200.0)
    assert "recovering app-accounts-changelog[0]: 600 changelog records left, 200 records/s, ETA 3 s" in caplog.text


def test_no_offsets_yet_means_no_partitions():
    class Broken(FakeRecovery):
        def active_remaining(self):
            raise KeyError("not built")

    progress = RecoveryProgress(Broken())
    progress.sample(now=1.0)
    assert progress.partitions == [] and progress.restored_total == 0
