"""Fixes from the docs walkthrough, at unit level (redis-server comparisons are in
``tests/integration/test_cache_walk_fixes.py``): ``COMMAND INFO``/``GETKEYS``/``COUNT``/``LIST``
answer their arguments, ``INFO <section>`` answers that section, and counters on memcached nodes
never write what Redis would refuse (a value past 2**63-1, ``007``, a sum past 64 bits)."""

from __future__ import annotations

from typing import Any

import pytest

from mezzo.cache.commands import COMMANDS
from mezzo.cache.commands_info import categories, command_keys, info_sections
from mezzo.cache.distributed.memcached import _segments
from mezzo.cache.distributed.meta import MetaReader, MetaReply, ReplyError
from mezzo.cache.distributed.meta_ops import CAS_ATTEMPTS, MAYBE_MORE, MORE, translate
from mezzo.cache.engine import CacheError, Engine
from mezzo.cache.resp import Session
from mezzo.cache.server import CacheServer


@pytest.fixture
def served() -> tuple[CacheServer, Session]:
    return CacheServer(Engine(), None, require_auth=False), Session(True, "test")


def run(served: tuple[CacheServer, Session], *args: str) -> bytes:
    server, session = served
    return server.execute(session, [a.encode() for a in args])


# --- COMMAND --------------------------------------------------------------------------------


def test_command_info_answers_the_names_asked_for_and_nil_for_unknown_ones(served: tuple[CacheServer, Session]) -> None:
    assert run(served, "COMMAND", "INFO", "get") == (
        b"*1\r\n*6\r\n$3\r\nget\r\n:2\r\n*1\r\n+readonly\r\n:1\r\n:1\r\n:1\r\n")
    both = run(served, "COMMAND", "INFO", "nosuch", "MSET")
    assert both == b"*2\r\n$-1\r\n*6\r\n$4\r\nmset\r\n:-3\r\n*1\r\n+write\r\n:1\r\n:-1\r\n:2\r\n"
    served[1].resp3 = True
    assert run(served, "COMMAND", "INFO", "nosuch") == b"*1\r\n_\r\n"
    served[1].resp3 = False
    everything = run(served, "COMMAND")
    assert run(served, "COMMAND", "INFO") == everything and everything.startswith(b"*%d\r\n" % len(COMMANDS))


def test_command_getkeys_finds_the_keys_of_a_command_line() -> None:
    assert command_keys([b"GET", b"k"]) == [b"k"]
    assert command_keys([b"mset", b"a", b"1", b"b", b"2"]) == [b"a", b"b"]
    assert command_keys([b"mset", b"a", b"1", b"b"]) == [b"a", b"b"]  # as Redis: the odd count is MSET's own error
    assert command_keys([b"del", b"a", b"b", b"c"]) == [b"a", b"b", b"c"]
    assert command_keys([b"set", b"k", b"v", b"EX", b"10"]) == [b"k"]
    assert command_keys([b"Object", b"Encoding", b"k"]) == [b"k"]
    for args, error in [([b"nosuch", b"a"], "Invalid command specified"),
                        ([b"object", b"encodingx", b"k"], "Invalid command specified"),
                        ([b"object", b"help"], "The command has no key arguments"),
                        ([b"object", b"encoding"], "Invalid number of arguments specified for command"),
                        ([b"ping", b"x"], "The command has no key arguments"),
                        ([b"scan", b"0"], "The command has no key arguments"),
                        ([b"config", b"get", b"x"], "The command has no key arguments"),
                        ([b"get", b"a", b"b"], "Invalid number of arguments specified for command"),
                        ([b"hset", b"h", b"f"], "Invalid number of arguments specified for command")]:
        with pytest.raises(CacheError, match=error):
            command_keys(args)


def test_command_subcommands_reply_and_refuse_as_redis(served: tuple[CacheServer, Session]) -> None:
    assert run(served, "COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    assert run(served, "COMMAND", "GETKEYS", "nosuch", "x") == b"-ERR Invalid command specified\r\n"
    assert run(served, "command", "count") == b":%d\r\n" % len(COMMANDS)
    listed = run(served, "COMMAND", "LIST")
    assert listed.startswith(b"*%d\r\n" % len(COMMANDS)) and b"$6\r\nexpire\r\n" in listed
    assert run(served, "COMMAND", "LIST", "FILTERBY", "PATTERN", "H*ET") == \
        b"*4\r\n$4\r\nhget\r\n$5\r\nhmget\r\n$5\r\nhmset\r\n$4\r\nhset\r\n"  # in any case, as Redis
    assert run(served, "COMMAND", "LIST", "FILTERBY", "PATTERN", "hm*") == b"*2\r\n$5\r\nhmget\r\n$5\r\nhmset\r\n"
    assert run(served, "COMMAND", "LIST", "FILTERBY", "MODULE", "x") == b"*0\r\n"
    assert run(served, "COMMAND", "LIST", "FILTERBY", "ACLCAT", "bogus") == b"*0\r\n"
    assert run(served, "COMMAND", "LIST", "FILTERBY", "ACLCAT", "Connection") == \
        b"*7\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(n), n)
                            for n in sorted([b"auth", b"command", b"echo", b"hello", b"ping", b"quit", b"select"]))
    for args, error in [(("COMMAND", "BOGUS"), "ERR unknown subcommand 'BOGUS'. Try COMMAND HELP."),
                        (("COMMAND", "COUNT", "x"), "ERR wrong number of arguments for 'command|count' command"),
                        (("COMMAND", "GETKEYS", "get"), "ERR wrong number of arguments for 'command|getkeys' command"),
                        (("COMMAND", "LIST", "bogus"), "ERR syntax error"),
                        (("COMMAND", "LIST", "FILTERBY", "PATTERN"), "ERR syntax error"),
                        (("COMMAND", "LIST", "FILTERBY", "ACL", "string"), "ERR syntax error")]:
        assert run(served, *args) == b"-%s\r\n" % error.encode(), args
    assert run(served, "COMMAND", "HELP").startswith(b"*15\r\n+COMMAND <subcommand>")
    assert run(served, "COMMAND", "DOCS", "get") == b"*0\r\n"


def test_acl_categories_follow_redis_for_each_kind_of_command() -> None:
    assert categories(b"get") == {"read", "string", "fast"}
    assert categories(b"set") == {"write", "string", "slow"}
    assert categories(b"del") == {"keyspace", "write", "slow"}
    assert categories(b"hgetall") == {"read", "hash", "slow"}
    assert categories(b"hello") == {"connection", "fast"}
    assert categories(b"keys") == {"keyspace", "read", "slow", "dangerous"}
    assert categories(b"object") == {"slow"} and categories(b"info") == {"slow", "dangerous"}
    assert all(("fast" in categories(n)) != ("slow" in categories(n)) for n in COMMANDS)


# --- INFO -----------------------------------------------------------------------------------

def headers(reply: bytes) -> list[bytes]:
    return [line for line in reply.split(b"\r\n") if line.startswith(b"# ")]


def test_info_answers_only_the_sections_asked_for(served: tuple[CacheServer, Session]) -> None:
    run(served, "SET", "k", "v")
    everything = run(served, "INFO")
    assert headers(everything) == [b"# Server", b"# Clients", b"# Memory", b"# Stats", b"# Keyspace"]
    for word in ("all", "ALL", "everything", "default"):
        assert headers(run(served, "INFO", word)) == headers(everything)
    assert run(served, "INFO", "keyspace") == b"$44\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n"
    two = run(served, "INFO", "KeySpace", "clients", "keyspace", "nosuch")
    assert headers(two) == [b"# Clients", b"# Keyspace"]  # Redis' order, once each
    assert b"\r\n\r\n# Keyspace\r\ndb0:" in two and b"used_memory" not in two
    assert run(served, "INFO", "nosuch") == b"$0\r\n\r\n"
    assert run(served, "INFO", "persistence") == b"$0\r\n\r\n"  # a section Mezzo does not keep
    assert headers(run(served, "INFO", "stats", "default")) == headers(everything)


def test_info_sections_keep_the_text_as_it_was() -> None:
    text = "# Server\r\na:1\r\n\r\n# Clients\r\nb:2\r\n\r\n# Keyspace\r\n"
    assert info_sections(text, {"server", "clients", "keyspace"}) == text
    assert info_sections(text, {"keyspace"}) == "# Keyspace\r\n"
    assert info_sections(text, {"clients"}) == "# Clients\r\nb:2\r\n"
    assert info_sections(text, set()) == ""


# --- counters on memcached nodes -------------------------------------------------------------


def replies(raw: bytes) -> list[MetaReply]:
    reader, out = MetaReader(), []
    reader.feed(raw)
    while (reply := reader.gets()) is not False:
        assert not isinstance(reply, bool)
        out.append(reply)
    return out


def drive(args: tuple[bytes, ...], script: list[bytes]) -> tuple[Any, list[list[bytes]]]:
    """One op against scripted node replies (one raw string per round): its answer, the rounds sent."""
    op = translate(args)
    sent: list[list[bytes]] = []
    try:
        requests = next(op.steps)
        for raw in script:
            sent.append(requests)
            requests = op.steps.send(replies(raw))
    except StopIteration as done:
        return done.value, sent
    raise AssertionError(f"the op wants another round: {requests!r}")


@pytest.mark.parametrize(("stored", "args", "error"), [
    (b"18446744073709551615", (b"INCR", b"x"), "ERR value is not an integer or out of range"),
    (b"9223372036854775808", (b"INCR", b"x"), "ERR value is not an integer or out of range"),
    (b"9223372036854775807", (b"INCR", b"x"), "ERR increment or decrement would overflow"),
    (b"9223372036854775800", (b"INCRBY", b"x", b"8"), "ERR increment or decrement would overflow"),
    (b"-9223372036854775808", (b"DECR", b"x"), "ERR increment or decrement would overflow"),
    (b"007", (b"INCR", b"x"), "ERR value is not an integer or out of range"),
    (b" 7", (b"INCR", b"x"), "ERR value is not an integer or out of range"),
    (b"7 abc", (b"INCRBY", b"x", b"2"), "ERR value is not an integer or out of range"),
    (b"-0", (b"INCR", b"x"), "ERR value is not an integer or out of range"),
    (b"+7", (b"INCR", b"x"), "ERR value is not an integer or out of range"),
    (b"0                   ", (b"INCR", b"x"), "ERR value is not an integer or out of range"),
])
def test_a_counter_redis_would_refuse_is_read_and_never_written(stored: bytes, args: tuple[bytes, ...],
                                                                 error: str) -> None:
    answer, sent = drive(args, [b"VA %d c9 t-1\r\n%s\r\n" % (len(stored), stored)])
    assert isinstance(answer, ReplyError) and str(answer) == error
    assert sent == [[b"mg x v c t\r\n"]]  # the read only: memcached's incr never ran


def test_an_increment_from_zero_or_more_is_memcacheds_incr_guarded_by_the_cas_token() -> None:
    assert drive((b"INCRBY", b"k", b"5"), [b"VA 2 c3 t40\r\n10\r\n", b"VA 2\r\n15\r\n"]) == \
        (15, [[b"mg k v c t\r\n"], [b"ma k C3 D5 v\r\n"]])  # ma keeps the TTL to the second, no T sent
    assert drive((b"INCR", b"k"), [b"VA 19 c3 t-1\r\n9223372036854775806\r\n", b"VA 19\r\n9223372036854775807\r\n"])[0] \
        == 2**63 - 1
    # another client wrote in between (EX) or deleted the key (NF): read again
    answer, sent = drive((b"INCR", b"k"), [b"VA 1 c3 t-1\r\n1\r\n", b"EX\r\n", b"VA 1 c4 t-1\r\n7\r\n", b"NF\r\n",
                                           b"EN\r\n", b"HD\r\n"])
    assert answer == 1 and sent[1] == [b"ma k C3 D1 v\r\n"] and sent[3] == [b"ma k C4 D1 v\r\n"]
    assert sent[5] == [b"ms k 1 T0 ME\r\n1\r\n"]  # a missing key starts at 0, as in Redis
    # below zero memcached cannot count: the sum is written with ms and the token
    assert drive((b"INCRBY", b"k", b"10"), [b"VA 2 c4 t30\r\n-5\r\n", b"HD\r\n"]) == \
        (5, [[b"mg k v c t\r\n"], [b"ms k 1 T30 C4\r\n5\r\n"]])
    assert drive((b"INCR", b"k"), [b"EN\r\n", b"NS\r\n", b"VA 1 c5 t-1\r\n3\r\n", b"VA 1\r\n4\r\n"])[0] == 4


def test_counter_arguments_are_read_as_redis_reads_them() -> None:
    for bad in (b"-0", b"+1", b"01", b" 1", b"9223372036854775808"):
        answer, sent = drive((b"INCRBY", b"k", bad), [])
        assert str(answer) == "ERR value is not an integer or out of range" and not sent, bad
    assert str(drive((b"DECRBY", b"k", b"-9223372036854775808"), [])[0]) == "ERR decrement would overflow"


def test_increments_of_one_key_still_share_a_pipeline_and_contention_gives_up() -> None:
    ops = [translate(c) for c in ((b"INCR", b"c"), (b"INCRBY", b"c", b"2"), (b"GET", b"d"), (b"INCR", b"e"))]
    assert [op.rounds for op in ops[:2]] == [MAYBE_MORE, MAYBE_MORE] and translate((b"DECR", b"c")).rounds == MORE
    assert _segments(ops) == [(0, 4)]  # their reads go out together; each writes with the token it read
    ops.append(translate((b"GET", b"c")))
    assert _segments(ops) == [(0, 1), (1, 2), (2, 5)]  # a GET of the counter waits for the increments
    answer, _ = drive((b"INCR", b"hot"), [b"VA 1 c1 t-1\r\n1\r\n", b"EX\r\n"] * CAS_ATTEMPTS)
    assert isinstance(answer, ReplyError) and "kept changing" in str(answer)
