"""Which hosts a node may call on a token holder's say-so (MEZZO_TX_ALLOW_HOSTS, MEZZO_MESSAGING_ALLOW_HOSTS)."""

from __future__ import annotations

import pytest

from mezzo.node.outbound import Outbound


def test_no_entries_allow_every_host() -> None:
    assert Outbound.parse("").allows("169.254.169.254") and Outbound().open


def test_names_suffixes_and_networks() -> None:
    allowed = Outbound.parse("busi.internal, *.svc.cluster.local, 10.1.0.0/16, ::1")
    assert allowed.allows("busi.internal") and allowed.allows("BUSI.internal.")
    assert allowed.allows("orders.shop.svc.cluster.local")
    assert not allowed.allows("svc.cluster.local.evil.com") and not allowed.allows("xsvc.cluster.local")
    assert allowed.allows("10.1.2.3") and not allowed.allows("10.2.0.1")
    assert allowed.allows("[::1]") and allowed.allows("::1")
    assert not allowed.allows("169.254.169.254") and not allowed.allows("localhost")
    assert not allowed.allows("127.0.0.1")  # a network entry admits only IP literals inside it


def test_names_are_not_matched_against_networks() -> None:
    """A name that resolves into an allowed network still needs an entry of its own."""
    assert not Outbound.parse("127.0.0.0/8").allows("localhost")


@pytest.mark.parametrize("entry", ["*.", "http://x", "a b", "10.0.0.0/33", "x@y"])
def test_a_bad_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed host"):
        Outbound.parse(entry)
