"""Latency histograms the scheduler thread fills as tokens come (vLLM's time-to-first-token and
inter-token latency), read by any thread as a snapshot with Prometheus's cumulative-bucket meaning."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

# seconds; a CPU decodes a token in tens of milliseconds, a GPU in a few, a long prompt takes seconds
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    buckets: tuple[float, ...]  # upper bounds; +Inf after them
    counts: tuple[int, ...]  # observations at or below each bound, and in all (one more than buckets)
    total: float  # the sum of the observations

    @property
    def count(self) -> int:
        return self.counts[-1]


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative; the last is above every bound
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, times: int = 1) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += times
            self._total += value * times

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts, total = list(self._counts), self._total
        cumulative, running = [], 0
        for count in counts:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(self.buckets, tuple(cumulative), total)


class TokenLatency:
    """Time to first token and inter-token latency of every sequence."""

    def __init__(self) -> None:
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.inter_token = Histogram(ITL_BUCKETS)

    def tokens(self, produced: int, submitted: float, last: float) -> float:
        """A sequence made `produced` tokens in this step; it was submitted at `submitted`, and its latest
        token came at `last` (0: none yet), both time.perf_counter(). Returns when these came."""
        now = time.perf_counter()
        if not last:
            self.time_to_first_token.observe(now - submitted)
        else:  # tokens accepted together share the step's time
            self.inter_token.observe((now - last) / produced, produced)
        return now
