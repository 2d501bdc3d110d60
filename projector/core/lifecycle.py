"""Read-model versions: which one is live, which one is built beside it, and when to switch (CONTRACT §6).

Pure: the worker (:mod:`projector.runtime.builds`) feeds it the control
table's entries and the changelog topics that exist, and carries out what it
decides.

- Version *N* of read model *name* lives in the table :func:`versioned_table`
  (``name``, or ``name-vN`` from 2 on), with its own changelog.
- The control entry ``projector.tables.<name>`` = ``{"version": N}`` says
  which version is live (``null``: none yet, a brand-new read model). It is
  written when a build starts (the version that was live) and when the new
  version takes over. Every worker follows it.
- While a build runs, each of its partitions reports its progress in
  ``projector.build.<name>.v<N>.p<P>``; once every partition has caught up
  with the live fold, a worker writes the switch (with
  ``PROJECTOR_CUTOVER=manual``, only after ``projector.cutover.<name>`` = N,
  which ``POST /tables/{table}/cutover`` writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from projector.core.catalog import Catalog, ReadModel, versioned_table

LIVE_PREFIX = "projector.tables."
BUILD_PREFIX = "projector.build."
CUTOVER_PREFIX = "projector.cutover."
#: projector's own table of build positions: per events partition, ``{table: {"offset", "caught_up"}}``.
BUILDS = "_builds"


def live_key(name: str) -> str:
    return f"{LIVE_PREFIX}{name}"


def cutover_key(name: str) -> str:
    return f"{CUTOVER_PREFIX}{name}"


def build_key(name: str, version: int, partition: int) -> str:
    return f"{BUILD_PREFIX}{name}.v{version}.p{partition}"


def build_prefix(name: str, version: int) -> str:
    return f"{BUILD_PREFIX}{name}.v{version}.p"


def live_version(entries: Mapping[str, Any], name: str) -> tuple[bool, Optional[int]]:
    """(found, version) of the control entry that says which version of ``name`` is live."""
    entry = entries.get(live_key(name))
    if not isinstance(entry, dict) or "version" not in entry:
        return False, None
    version = entry["version"]
    if version is None or (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
        return True, version
    return False, None


def versions_in(name: str, tables: Iterable[str]) -> list[int]:
    """The versions of ``name`` among table names (``name`` is version 1, ``name-vN`` version N)."""
    pattern = re.compile(re.escape(name) + r"(?:-v([0-9]+))?")
    out = []
    for table in tables:
        m = pattern.fullmatch(table)
        if m:
            out.append(int(m.group(1)) if m.group(1) else 1)
    return sorted(set(out))


@dataclass
class TableState:
    """One read model's versions on this worker: the one that answers, and the one being built."""

    model: ReadModel
    #: The version that answers queries (None: none yet; the read model is brand new and building).
    live: Optional[int]

    @property
    def building(self) -> Optional[int]:
        """The version being built beside the live one, if any: the module's own VERSION."""
        return None if self.live == self.model.version else self.model.version

    @property
    def live_table(self) -> Optional[str]:
        return None if self.live is None else versioned_table(self.model.name, self.live)

    @property
    def build_table(self) -> Optional[str]:
        return None if self.building is None else self.model.table


def plan_tables(catalog: Catalog, entries: Mapping[str, Any], existing: Iterable[str], fresh: bool) -> dict[str, TableState]:
    """Which version of each aggregate-keyed read model is live, and which is to be built.

    ``existing``: the table names whose changelog topic exists; ``fresh``: the
    app has folded nothing yet (its aggregate index has no changelog), so
    every read model is simply live at its own version.
    """
    existing = list(existing)
    out = {}
    for model in catalog.models:
        found, live = live_version(entries, model.name)
        if not found:
            if fresh or model.table in existing:
                live = model.version
            else:
                older = versions_in(model.name, existing)
                live = older[-1] if older else None
        out[model.name] = TableState(model, live)
    return out


@dataclass
class BuildProgress:
    """What the partitions of one build report (``projector.build.<name>.v<N>.p<P>``)."""

    partitions: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Mapping[str, Any], name: str, version: int) -> "BuildProgress":
        prefix = build_prefix(name, version)
        out = cls()
        for key, value in entries.items():
            if key.startswith(prefix) and key[len(prefix):].isdigit() and isinstance(value, dict):
                out.partitions[int(key[len(prefix):])] = value
        return out

    def caught_up(self, partitions: int) -> bool:
        return all(self.partitions.get(p, {}).get("caught_up") is True for p in range(partitions))

    def remaining(self, partitions: int) -> Optional[int]:
        """Records left to fold over all partitions (None: a partition has not reported yet)."""
        total = 0
        for p in range(partitions):
            entry = self.partitions.get(p)
            if entry is None:
                return None
            if entry.get("caught_up") is True:
                continue
            left = entry.get("remaining")
            if not isinstance(left, int):
                return None
            total += max(0, left)
        return total

    def rate(self) -> float:
        return sum(float(e.get("rate") or 0) for e in self.partitions.values()
                   if isinstance(e.get("rate"), (int, float)) and e.get("caught_up") is not True)

    def summary(self, version: int, partitions: int) -> dict[str, Any]:
        """``GET /tables``' ``building``: ``{"version", "remaining", "eta_seconds"}`` (and how many partitions are done)."""
        remaining = self.remaining(partitions)
        rate = self.rate()
        eta = None
        if remaining == 0:
            eta = 0.0
        elif remaining is not None and rate > 0:
            eta = round(remaining / rate, 1)
        done = sum(1 for p in range(partitions) if self.partitions.get(p, {}).get("caught_up") is True)
        return {"version": version, "remaining": remaining, "eta_seconds": eta,
                "partitions_caught_up": done, "rate": round(rate, 1)}
