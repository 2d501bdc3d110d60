"""The benchmarks: ``projector bench`` and its contestants, and the ``bench-*`` commands.

- :mod:`~projector.bench.common`: what the commands share (the broker, the
  Kafka client, worker processes, stopping them, the report);
- :mod:`~projector.bench.compare`: ``projector bench``, projector side by side
  with its peers on one topic;
- :mod:`~projector.bench.lookups`, :mod:`~projector.bench.scale`,
  :mod:`~projector.bench.commands`: ``bench-lookups``, ``bench-scale`` and
  ``bench-commands``;
- the contestants, each run as ``python -m projector.bench.<name>``:
  :mod:`~projector.bench.naive` (one Faust agent), :mod:`~projector.bench.quix`
  (Quix Streams) and :mod:`~projector.bench.raw` (a plain consumer loop), with
  their shared fold, :mod:`~projector.bench.fold`;
- :mod:`~projector.bench.extras`: the optional packages (the ``bench``
  extra), imported only by the contestants that need them.
"""
