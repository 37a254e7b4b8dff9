"""When to try a failed delivery again: exponential backoff with a ceiling and an attempt limit.

After the n-th failed attempt (n = 1, 2, ...) the next one waits
``min(base * 2 ** (n - 1), ceiling)`` seconds; after ``max_attempts`` failed attempts the
delivery is given up (marked failed with the reason of the last attempt).

Deliveries waiting because their destination did not answer are sent before their delay ends
when it answers again (:mod:`node.delivery.probe`); such an early attempt that finds the
destination down once more does not count as a failed attempt here and leaves the schedule as
it was (:func:`node.delivery.records.record_outcomes`), so an outage never uses up attempts
faster than this schedule.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from node.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff schedule of deliveries (``CXR_NODE_DELIVERY_*`` settings)."""

    base_seconds: float
    max_seconds: float
    max_attempts: int

    def __post_init__(self) -> None:
        if self.base_seconds <= 0 or self.max_seconds <= 0:
            raise ValueError("backoff seconds must be positive (CXR_NODE_DELIVERY_BACKOFF_SECONDS, ..._MAX_SECONDS)")
        if self.max_attempts < 1:
            raise ValueError("CXR_NODE_DELIVERY_MAX_ATTEMPTS must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        return cls(
            base_seconds=settings.delivery_backoff_seconds,
            max_seconds=settings.delivery_backoff_max_seconds,
            max_attempts=settings.delivery_max_attempts,
        )

    def delay_after(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` (>= 1) failures before the next attempt."""
        if failed_attempts < 1:
            raise ValueError(f"failed_attempts counts failures so far and starts at 1; got {failed_attempts}")
        exponent = min(failed_attempts - 1, 62)  # 2**62 s is far past any ceiling; avoids huge floats
        return min(self.base_seconds * (2.0**exponent), self.max_seconds)

    def exhausted(self, failed_attempts: int) -> bool:
        """True when no attempt is left after ``failed_attempts`` failures."""
        return failed_attempts >= self.max_attempts

    def next_attempt_at(self, now: dt.datetime, failed_attempts: int) -> dt.datetime:
        """When the next attempt is due after ``failed_attempts`` failures at ``now``."""
        return now + dt.timedelta(seconds=self.delay_after(failed_attempts))

    def schedule(self) -> list[float]:
        """Every delay in order: the waits between attempt 1 and 2, 2 and 3, ..., up to the limit."""
        return [self.delay_after(n) for n in range(1, self.max_attempts)]
