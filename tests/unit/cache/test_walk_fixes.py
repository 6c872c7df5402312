"""Fixes from the docs walkthrough, at unit level (redis-server comparisons are in
``tests/integration/test_cache_walk_fixes.py``): ``COMMAND INFO``/``GETKEYS``/``COUNT``/``LIST``
answer their arguments, ``INFO <section>`` answers that section, and counters on memcached nodes
never write what Redis would refuse (a value past 2**63-1, ``007``, a sum past 64 bits)."""

from __future__ import annotations

from typing import Any

import pytest

from mezzo.cache.commands import COMMANDS
from mezzo.cache.commands_docs import DOCS, SUBCOMMANDS, arguments
from mezzo.cache.commands_info import categories, command_keys, info_sections
from mezzo.cache.commands_more import _OBJECT_KEYED
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


# redis-server 7.0's rows (GET's without its flag ``fast``, which Mezzo does not list)
GET_ROW = (b"*10\r\n$3\r\nget\r\n:2\r\n*1\r\n+readonly\r\n:1\r\n:1\r\n:1\r\n*3\r\n+@read\r\n+@string\r\n+@fast\r\n*0\r\n"
           b"*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n"
           b"$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n"
           b"*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n")
REFCOUNT_ROW_RESP3 = (
    b"*10\r\n$15\r\nobject|refcount\r\n:3\r\n~1\r\n+readonly\r\n:2\r\n:2\r\n:1\r\n~3\r\n+@keyspace\r\n+@read\r\n"
    b"+@slow\r\n~1\r\n$23\r\nnondeterministic_output\r\n~1\r\n%3\r\n$5\r\nflags\r\n~1\r\n+RO\r\n$12\r\nbegin_search\r\n"
    b"%2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n%1\r\n$5\r\nindex\r\n:2\r\n$9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n"
    b"$5\r\nrange\r\n$4\r\nspec\r\n%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n~0\r\n")


def test_command_info_answers_the_names_asked_for_and_nil_for_unknown_ones(served: tuple[CacheServer, Session]) -> None:
    assert run(served, "COMMAND", "INFO", "get") == b"*1\r\n" + GET_ROW
    both = run(served, "COMMAND", "INFO", "nosuch", "MSET")
    assert both.startswith(b"*2\r\n$-1\r\n*10\r\n$4\r\nmset\r\n:-3\r\n*1\r\n+write\r\n:1\r\n:-1\r\n:2\r\n"
                           b"*3\r\n+@write\r\n+@string\r\n+@slow\r\n*2\r\n$26\r\nrequest_policy:multi_shard\r\n")
    assert b"$5\r\nflags\r\n*2\r\n+OW\r\n+update\r\n" in both and b"$7\r\nlastkey\r\n:-1\r\n$7\r\nkeystep\r\n:2\r\n" in both
    served[1].resp3 = True
    assert run(served, "COMMAND", "INFO", "object|refcount", "get|x") == b"*2\r\n" + REFCOUNT_ROW_RESP3 + b"_\r\n"
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
    listed = run(served, "COMMAND", "LIST")  # subcommands too, as Redis lists them
    assert listed.startswith(b"*%d\r\n" % (len(COMMANDS) + sum(map(len, SUBCOMMANDS.values()))))
    assert b"$6\r\nexpire\r\n" in listed and b"$15\r\nobject|encoding\r\n" in listed
    assert run(served, "COMMAND", "LIST", "FILTERBY", "PATTERN", "H*ET") == \
        b"*4\r\n$4\r\nhget\r\n$5\r\nhmget\r\n$5\r\nhmset\r\n$4\r\nhset\r\n"  # in any case, as Redis
    assert run(served, "COMMAND", "LIST", "FILTERBY", "PATTERN", "hm*") == b"*2\r\n$5\r\nhmget\r\n$5\r\nhmset\r\n"
    assert run(served, "COMMAND", "LIST", "FILTERBY", "MODULE", "x") == b"*0\r\n"
    assert run(served, "COMMAND", "LIST", "FILTERBY", "ACLCAT", "bogus") == b"*0\r\n"
    connection = sorted([b"auth", b"command", b"echo", b"hello", b"ping", b"quit", b"select",
                         *(b"client|" + n for n in SUBCOMMANDS[b"client"]),
                         *(b"command|" + n for n in SUBCOMMANDS[b"command"])])
    assert run(served, "COMMAND", "LIST", "FILTERBY", "ACLCAT", "Connection") == \
        b"*%d\r\n" % len(connection) + b"".join(b"$%d\r\n%s\r\n" % (len(n), n) for n in connection)
    for args, error in [(("COMMAND", "BOGUS"), "ERR unknown subcommand 'BOGUS'. Try COMMAND HELP."),
                        (("COMMAND", "COUNT", "x"), "ERR wrong number of arguments for 'command|count' command"),
                        (("COMMAND", "GETKEYS", "get"), "ERR wrong number of arguments for 'command|getkeys' command"),
                        (("COMMAND", "LIST", "bogus"), "ERR syntax error"),
                        (("COMMAND", "LIST", "FILTERBY", "PATTERN"), "ERR syntax error"),
                        (("COMMAND", "LIST", "FILTERBY", "ACL", "string"), "ERR syntax error")]:
        assert run(served, *args) == b"-%s\r\n" % error.encode(), args
    assert run(served, "COMMAND", "HELP").startswith(b"*18\r\n+COMMAND <subcommand>")
    assert run(served, "COMMAND", "DOCS", "nosuch") == b"*0\r\n"


def test_acl_categories_follow_redis_for_each_kind_of_command() -> None:
    assert categories(b"get") == {"read", "string", "fast"}
    assert categories(b"set") == {"write", "string", "slow"}
    assert categories(b"del") == {"keyspace", "write", "slow"}
    assert categories(b"hgetall") == {"read", "hash", "slow"}
    assert categories(b"hello") == {"connection", "fast"}
    assert categories(b"keys") == {"keyspace", "read", "slow", "dangerous"}
    assert categories(b"object") == {"slow"} and categories(b"info") == {"slow", "dangerous"}
    assert all(("fast" in categories(n)) != ("slow" in categories(n)) for n in COMMANDS)


def test_every_command_and_subcommand_has_docs_and_the_subcommands_are_the_ones_answered() -> None:
    names = {n.decode() for n in COMMANDS} | {f"{c.decode()}|{s.decode()}" for c, subs in SUBCOMMANDS.items()
                                              for s in subs}
    assert set(DOCS) == names
    assert set(SUBCOMMANDS[b"object"]) == {n.lower() for n in _OBJECT_KEYED} | {b"help"}
    assert all(DOCS[n][2] in {"string", "hash", "generic", "connection", "server"} for n in DOCS)


def test_argument_notation_reads_as_redis_documents_the_arguments() -> None:
    condition = {"name": "condition", "type": "oneof", "flags": ["optional"], "arguments": [
        {"name": "nx", "type": "pure-token", "token": "NX"}, {"name": "xx", "type": "pure-token", "token": "XX"}]}
    assert arguments("key value [condition(NX|XX)] [GET]") == [
        {"name": "key", "type": "key", "key_spec_index": 0}, {"name": "value", "type": "string"}, condition,
        {"name": "get", "type": "pure-token", "token": "GET", "flags": ["optional"]}]
    assert arguments("cursor [MATCH pattern] [COUNT count]") == [
        {"name": "cursor", "type": "integer"}, {"name": "pattern", "type": "pattern", "token": "MATCH", "flags": ["optional"]},
        {"name": "count", "type": "integer", "token": "COUNT", "flags": ["optional"]}]
    assert arguments("key_value(key value)... [section...] increment:double unix-time-seconds") == [
        {"name": "key_value", "type": "block", "flags": ["multiple"], "arguments": [
            {"name": "key", "type": "key", "key_spec_index": 0}, {"name": "value", "type": "string"}]},
        {"name": "section", "type": "string", "flags": ["optional", "multiple"]},
        {"name": "increment", "type": "double"}, {"name": "unix-time-seconds", "type": "unix-time"}]
    for broken in ("[key", "key]", "name(a b"):
        with pytest.raises((ValueError, IndexError)):
            arguments(broken)


def test_command_docs_answer_as_redis_server_7(served: tuple[CacheServer, Session]) -> None:
    # redis-server 7.0.15's bytes
    get = (b"$3\r\nget\r\n%5\r\n$7\r\nsummary\r\n$22\r\nGet the value of a key\r\n$5\r\nsince\r\n$5\r\n1.0.0\r\n"
           b"$5\r\ngroup\r\n$6\r\nstring\r\n$10\r\ncomplexity\r\n$4\r\nO(1)\r\n$9\r\narguments\r\n*1\r\n%3\r\n$4\r\nname\r\n"
           b"$3\r\nkey\r\n$4\r\ntype\r\n$3\r\nkey\r\n$14\r\nkey_spec_index\r\n:0\r\n")
    hmset = (b"$5\r\nhmset\r\n%8\r\n$7\r\nsummary\r\n$43\r\nSet multiple hash fields to multiple values\r\n$5\r\nsince\r\n"
             b"$5\r\n2.0.0\r\n$5\r\ngroup\r\n$4\r\nhash\r\n$10\r\ncomplexity\r\n$47\r\nO(N) where N is the number of fields "
             b"being set.\r\n$9\r\ndoc_flags\r\n~1\r\n+deprecated\r\n$16\r\ndeprecated_since\r\n$5\r\n4.0.0\r\n$11\r\n"
             b"replaced_by\r\n$38\r\n`HSET` with multiple field-value pairs\r\n$9\r\narguments\r\n*2\r\n%3\r\n$4\r\nname\r\n"
             b"$3\r\nkey\r\n$4\r\ntype\r\n$3\r\nkey\r\n$14\r\nkey_spec_index\r\n:0\r\n%4\r\n$4\r\nname\r\n$11\r\nfield_value\r\n"
             b"$4\r\ntype\r\n$5\r\nblock\r\n$5\r\nflags\r\n~1\r\n+multiple\r\n$9\r\narguments\r\n*2\r\n%2\r\n$4\r\nname\r\n"
             b"$5\r\nfield\r\n$4\r\ntype\r\n$6\r\nstring\r\n%2\r\n$4\r\nname\r\n$5\r\nvalue\r\n$4\r\ntype\r\n$6\r\nstring\r\n")
    served[1].resp3 = True
    assert run(served, "COMMAND", "DOCS", "GET", "nosuch", "hmset") == b"%2\r\n" + get + hmset
    served[1].resp3 = False  # RESP2: maps are flat arrays, sets arrays
    flat = run(served, "COMMAND", "DOCS", "get", "get")
    assert flat == b"*4\r\n" + (get.replace(b"%5", b"*10").replace(b"%3", b"*6")) * 2
    everything = run(served, "COMMAND", "DOCS")
    assert everything.startswith(b"*%d\r\n" % (2 * len(COMMANDS))) and b"$15\r\nobject|encoding\r\n" in everything
    assert run(served, "COMMAND", "DOCS", "object|encoding").startswith(b"*2\r\n$15\r\nobject|encoding\r\n*10\r\n")


def test_command_getkeysandflags_gives_each_key_its_access_flags(served: tuple[CacheServer, Session]) -> None:
    def keys(*args: str) -> bytes:
        return run(served, "COMMAND", "GETKEYSANDFLAGS", *args)

    assert keys("MSET", "a", "1", "b", "2") == b"*2\r\n*2\r\n$1\r\na\r\n*2\r\n+OW\r\n+update\r\n*2\r\n$1\r\nb\r\n*2\r\n+OW\r\n+update\r\n"
    assert keys("set", "k", "v") == b"*1\r\n*2\r\n$1\r\nk\r\n*2\r\n+OW\r\n+update\r\n"
    assert keys("set", "k", "v", "EX", "1", "get") == b"*1\r\n*2\r\n$1\r\nk\r\n*3\r\n+RW\r\n+access\r\n+update\r\n"
    assert keys("GET", "k") == b"*1\r\n*2\r\n$1\r\nk\r\n*2\r\n+RO\r\n+access\r\n"
    assert keys("unlink", "a") == b"*1\r\n*2\r\n$1\r\na\r\n*2\r\n+RM\r\n+delete\r\n"
    assert keys("OBJECT", "ENCODING", "k") == b"*1\r\n*2\r\n$1\r\nk\r\n*1\r\n+RO\r\n"
    served[1].resp3 = True
    assert keys("append", "k", "v") == b"*1\r\n*2\r\n$1\r\nk\r\n~2\r\n+RW\r\n+insert\r\n"
    for args, error in [(("nosuch", "a"), "ERR Invalid command specified"),
                        (("CLIENT", "BOGUS", "x"), "ERR Invalid command specified"),
                        (("CLIENT", "SETNAME", "x"), "ERR The command has no key arguments"),
                        (("OBJECT", "HELP"), "ERR The command has no key arguments"),
                        (("GET", "a", "b"), "ERR Invalid number of arguments specified for command"),
                        (("GET",), "ERR wrong number of arguments for 'command|getkeysandflags' command")]:
        assert keys(*args) == b"-%s\r\n" % error.encode(), args


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
