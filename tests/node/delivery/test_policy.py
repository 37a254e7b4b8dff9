"""Backoff schedule and destinations: pure logic."""

from __future__ import annotations

import datetime as dt

import pytest

from node.delivery.destinations import destinations_for
from node.delivery.policy import RetryPolicy
from node.settings import Settings


def test_backoff_doubles_from_the_base_up_to_the_ceiling() -> None:
    policy = RetryPolicy(base_seconds=5, max_seconds=60, max_attempts=7)
    assert policy.schedule() == [5, 10, 20, 40, 60, 60]


def test_backoff_is_read_from_the_delivery_settings() -> None:
    settings = Settings(delivery_backoff_seconds=2, delivery_backoff_max_seconds=7, delivery_max_attempts=4)
    assert RetryPolicy.from_settings(settings).schedule() == [2, 4, 7]


def test_attempts_are_exhausted_at_the_configured_limit() -> None:
    policy = RetryPolicy(base_seconds=1, max_seconds=10, max_attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_next_attempt_time_adds_the_delay_to_now() -> None:
    policy = RetryPolicy(base_seconds=3, max_seconds=100, max_attempts=5)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert policy.next_attempt_at(now, 3) == now + dt.timedelta(seconds=12)


def test_huge_attempt_counts_stay_at_the_ceiling() -> None:
    assert RetryPolicy(base_seconds=1, max_seconds=600, max_attempts=10_000).delay_after(5000) == 600


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_seconds": 0, "max_seconds": 1, "max_attempts": 1}, "positive"),
        ({"base_seconds": 1, "max_seconds": 1, "max_attempts": 0}, "at least 1"),
    ],
)
def test_invalid_policies_are_refused_with_the_rule(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_delay_before_any_failure_is_an_error() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        RetryPolicy(base_seconds=1, max_seconds=2, max_attempts=3).delay_after(0)


def test_destinations_add_the_sender_only_when_it_is_a_known_pacs() -> None:
    settings = Settings(destinations="ARCHIVE@10.0.0.9:104", known_pacs="PACS1@10.0.0.5:104,PACS2@10.0.0.6:11112")
    assert [str(d) for d in destinations_for(settings, "PACS2")] == ["ARCHIVE@10.0.0.9:104", "PACS2@10.0.0.6:11112"]
    assert [str(d) for d in destinations_for(settings, "MODALITY")] == ["ARCHIVE@10.0.0.9:104"]
    assert [str(d) for d in destinations_for(settings, None)] == ["ARCHIVE@10.0.0.9:104"]


def test_a_destination_listed_twice_is_sent_to_once() -> None:
    settings = Settings(destinations="PACS1@10.0.0.5:104", known_pacs="PACS1@10.0.0.5:104")
    assert [str(d) for d in destinations_for(settings, "PACS1")] == ["PACS1@10.0.0.5:104"]
