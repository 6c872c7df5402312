"""The meta-protocol codec and the translation of Redis commands, against scripted memcached replies."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from mezzo.cache.distributed.memcached import _segments
from mezzo.cache.distributed.meta import (
    LONG_KEY_PREFIX,
    MAX_RELATIVE_TTL,
    MetaReader,
    MetaReply,
    ReplyError,
    at_flag,
    ms,
    ttl_flag,
    wire_key,
)
from mezzo.cache.distributed.meta_ops import CAS_ATTEMPTS, MAYBE_MORE, MORE, ONE, translate


def read_all(stream: bytes, chunk: int) -> list[MetaReply]:
    reader, out = MetaReader(), []
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i:i + chunk])
        while (reply := reader.gets()) is not False:
            assert not isinstance(reply, bool)
            out.append(reply)
    return out


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_reader_parses_every_reply_kind_however_the_bytes_arrive(chunk: int) -> None:
    stream = (b"VA 4 t-1 c7\r\na\r\nb\r\n" b"HD t100\r\n" b"EN\r\n" b"NF\r\n" b"NS\r\n" b"EX\r\n" b"MN\r\n"
              b"VA 0\r\n\r\n" b"STAT pid 1\r\nSTAT curr_items 12\r\nEND\r\n" b"OK\r\n"
              b"CLIENT_ERROR bad data chunk\r\n" b"SERVER_ERROR object too large for cache\r\n" b"ERROR\r\n"
              b"EN kfoo O9\r\n")
    replies = read_all(stream, chunk)
    assert [r.code for r in replies] == [b"VA", b"HD", b"EN", b"NF", b"NS", b"EX", b"MN", b"VA", b"ST", b"OK",
                                         b"ER", b"ER", b"ER", b"EN"]
    assert replies[0].value == b"a\r\nb" and replies[0].flag(b"t") == b"-1" and replies[0].flag(b"c") == b"7"
    assert replies[1].flag(b"t") == b"100" and replies[1].flag(b"v") is None and replies[7].value == b""
    assert b"STAT curr_items 12" in (replies[8].value or b"")
    assert str(replies[11].error()) == "ERR memcached: object too large for cache"
    assert str(replies[12].error()) == "ERR memcached: ERROR" and replies[13].flag(b"O") == b"9"


def test_reader_refuses_a_value_without_its_terminator() -> None:
    reader = MetaReader()
    reader.feed(b"VA 2\r\nabXY")
    with pytest.raises(ValueError):
        reader.gets()


def test_keys_memcached_cannot_take_raw_go_in_base64_or_as_a_digest() -> None:
    assert wire_key(b"user:1") == b"user:1" and wire_key("é".encode()) == "é".encode()
    assert wire_key(b"a b") == base64.b64encode(b"a b") + b" b"
    assert wire_key(b"tab\there\n") == base64.b64encode(b"tab\there\n") + b" b"
    long_key = b"k" * 251
    digest = wire_key(long_key)
    assert digest.endswith(b" b") and base64.b64decode(digest[:-2]).startswith(LONG_KEY_PREFIX)
    assert len(digest) <= 252 and digest == wire_key(long_key) and digest != wire_key(b"k" * 252)
    assert wire_key(b"x" * 250) == b"x" * 250  # the longest raw key
    assert base64.b64decode(wire_key(b"")[:-2]).startswith(LONG_KEY_PREFIX)  # memcached has no empty key
    spaced = b" " * 187  # 252 bytes in base64: too long, so a digest
    assert base64.b64decode(wire_key(spaced)[:-2]).startswith(LONG_KEY_PREFIX)
    # ms: the value's length stays the token after the key, the b flag goes after it
    assert ms(b"a b", b"xyz", b"T0") == b"ms YSBi 3 T0 b\r\nxyz\r\n"


def test_ttls_are_whole_seconds_rounded_up_and_unix_times_past_thirty_days() -> None:
    assert ttl_flag(1) == 1 and ttl_flag(1000) == 1 and ttl_flag(1001) == 2
    assert ttl_flag(MAX_RELATIVE_TTL * 1000) == MAX_RELATIVE_TTL
    now = int(time.time())
    assert now + MAX_RELATIVE_TTL < ttl_flag((MAX_RELATIVE_TTL + 1) * 1000) <= now + MAX_RELATIVE_TTL + 2
    assert at_flag(int(time.time() * 1000) - 1) == -1 and 9 <= at_flag(int(time.time() * 1000) + 10_000) <= 10


def run(args: tuple[bytes, ...], script: list[list[bytes]]) -> tuple[Any, list[list[bytes]]]:
    """Drive one op: ``script`` holds the node's raw replies, round by round; returns its answer
    and the requests it sent."""
    op = translate(args)
    sent: list[list[bytes]] = []
    try:
        requests = next(op.steps)
        for raw in script:
            sent.append(requests)
            replies = read_all(b"".join(raw), 1000)
            assert len(replies) == len(requests)
            requests = op.steps.send(replies)
    except StopIteration as done:
        return done.value, sent
    raise AssertionError(f"the op wants another round: {requests!r}")


def test_one_round_commands() -> None:
    assert run((b"GET", b"k"), [[b"VA 1\r\nv\r\n"]]) == (b"v", [[b"mg k v\r\n"]])
    assert run((b"get", b"k"), [[b"EN\r\n"]])[0] is None
    assert run((b"SET", b"k", b"v", b"EX", b"10", b"NX"), [[b"HD\r\n"]]) == (b"OK", [[b"ms k 1 T10 ME\r\nv\r\n"]])
    assert run((b"SET", b"k", b"v", b"XX"), [[b"NS\r\n"]]) == (None, [[b"ms k 1 T0 MR\r\nv\r\n"]])
    assert run((b"DEL", b"k"), [[b"NF\r\n"]])[0] == 0 and run((b"UNLINK", b"k"), [[b"HD\r\n"]])[0] == 1
    assert run((b"TTL", b"k"), [[b"HD t-1\r\n"]])[0] == -1 and run((b"PTTL", b"k"), [[b"HD t3\r\n"]])[0] == 3000
    assert run((b"TTL", b"k"), [[b"EN\r\n"]])[0] == -2
    assert run((b"PERSIST", b"k"), [[b"HD t5\r\n"]]) == (1, [[b"mg k t T0\r\n"]])
    assert run((b"EXPIRE", b"k", b"-1"), [[b"HD\r\n"]]) == (1, [[b"md k\r\n"]])
    # read first, as Redis would refuse before writing; then the increment, on that CAS token
    assert run((b"INCRBY", b"k", b"5"), [[b"VA 2 c3 t-1\r\n10\r\n"], [b"VA 2\r\n15\r\n"]]) == \
        (15, [[b"mg k v c t\r\n"], [b"ma k C3 D5 v\r\n"]])
    assert run((b"SET", b"k", b"v"), [[b"SERVER_ERROR object too large for cache\r\n"]])[0].args == \
        ("ERR memcached: object too large for cache",)
    assert run((b"DBSIZE",), [[b"STAT curr_items 7\r\nEND\r\n"]]) == (7, [[b"stats\r\n"]])


def test_arguments_are_checked_before_anything_is_sent() -> None:
    for args, message in [
        ((b"SET", b"k", b"v", b"EX", b"0"), "invalid expire time in 'set'"),
        ((b"SET", b"k", b"v", b"NX", b"XX"), "syntax error"),
        ((b"SET", b"k", b"v", b"EX", b"1", b"KEEPTTL"), "syntax error"),
        ((b"SET", b"k", b"v", b"EX"), "syntax error"),
        ((b"INCRBY", b"k", b"1.5"), "not an integer"),
        ((b"INCRBY", b"k", b"99999999999999999999"), "not an integer"),
        ((b"EXPIRE", b"k", b"10", b"NX"), "options of EXPIRE are not supported"),
        ((b"GETEX", b"k", b"EX"), "syntax error"),
        ((b"HSET", b"h", b"f", b"v"), "'HSET' is not supported on memcached nodes"),
        ((b"EVAL", b"return 1", b"0"), "'EVAL' is not supported"),
        ((b"SETEX", b"k"), "wrong number of arguments"),
    ]:
        answer, sent = run(args, [])
        assert isinstance(answer, ReplyError) and message in str(answer) and not sent, args


def test_decrements_go_below_zero_with_a_cas_write_retried_on_a_race() -> None:
    answer, sent = run((b"DECRBY", b"n", b"5"), [
        [b"VA 1 c10 t-1\r\n3\r\n"], [b"EX\r\n"],  # changed between the read and the write
        [b"VA 1 c11 t40\r\n2\r\n"], [b"HD\r\n"]])
    assert answer == -3
    assert sent == [[b"mg n v c t\r\n"], [b"ms n 2 T0 C10\r\n-2\r\n"], [b"mg n v c t\r\n"],
                    [b"ms n 2 T40 C11\r\n-3\r\n"]]  # the remaining TTL is kept
    assert run((b"DECR", b"n"), [[b"EN\r\n"], [b"HD\r\n"]]) == (-1, [[b"mg n v c t\r\n"], [b"ms n 2 T0 ME\r\n-1\r\n"]])
    assert "overflow" in str(run((b"DECRBY", b"n", b"2"), [[b"VA 20 c1\r\n-9223372036854775807\r\n"]])[0])
    assert translate((b"DECR", b"n")).rounds == MORE and translate((b"INCR", b"n")).rounds == MAYBE_MORE


def test_increments_fall_back_to_cas_on_a_negative_value_and_refuse_text() -> None:
    negative = [[b"VA 2 c4 t-1\r\n-5\r\n"], [b"HD\r\n"]]
    assert run((b"INCR", b"n"), negative)[0] == -4
    text = [[b"VA 3 c4 t-1\r\nabc\r\n"]]
    assert "not an integer" in str(run((b"INCR", b"n"), text)[0])


def test_cas_loops_give_up_with_an_error_under_endless_contention() -> None:
    script = [[b"VA 1 c1 t-1\r\n1\r\n"], [b"EX\r\n"]] * CAS_ATTEMPTS
    answer, _ = run((b"DECR", b"hot"), script)
    assert isinstance(answer, ReplyError) and "kept changing" in str(answer)


def test_getdel_append_and_set_get() -> None:
    assert run((b"GETDEL", b"k"), [[b"VA 1 c3\r\nv\r\n"], [b"HD\r\n"]]) == \
        (b"v", [[b"mg k v c\r\n"], [b"md k C3\r\n"]])
    assert run((b"APPEND", b"k", b"xy"), [[b"HD\r\n", b"HD s5\r\n"]])[0] == 5
    assert run((b"APPEND", b"k", b"xy"), [[b"NS\r\n", b"EN\r\n"], [b"HD\r\n"]]) == \
        (2, [[b"ms k 2 MA\r\nxy\r\n", b"mg k s\r\n"], [b"ms k 2 T0 ME\r\nxy\r\n"]])
    assert run((b"SET", b"k", b"new", b"GET"), [[b"VA 3 c8 t-1\r\nold\r\n"], [b"HD\r\n"]]) == \
        (b"old", [[b"mg k v c t\r\n"], [b"ms k 3 T0 C8\r\nnew\r\n"]])
    assert run((b"SET", b"k", b"new", b"KEEPTTL"), [[b"HD c8 t60\r\n"], [b"HD\r\n"]])[1][1] == \
        [b"ms k 3 T60 C8\r\nnew\r\n"]


def test_pipelines_wait_for_multi_round_ops_only_where_order_shows() -> None:
    def ops(*commands: tuple[bytes, ...]) -> list:
        return [translate(c) for c in commands]

    # single-round commands and increments of one counter all go in one pipeline
    assert _segments(ops((b"GET", b"a"), (b"INCR", b"c"), (b"INCR", b"c"), (b"SET", b"b", b"1"))) == [(0, 4)]
    # a CAS-backed command ends its run: what follows is sent once it is done
    assert _segments(ops((b"GET", b"a"), (b"DECR", b"c"), (b"GET", b"c"))) == [(0, 2), (2, 3)]
    # an increment that may need a second round waits when another command on its key follows
    assert _segments(ops((b"INCR", b"c"), (b"GET", b"c"), (b"GET", b"d"))) == [(0, 1), (1, 3)]
    assert translate((b"GET", b"a")).rounds == ONE
