"""What ``COMMAND`` says about a command beyond the command table: docs, subcommands, tips and
the flags of its key specification, as redis-server 7.0 says them for the commands Mezzo has.

``DOCS`` gives each command (and each subcommand, ``container|name``) its summary, the Redis
version it appeared in, its group and complexity (the first sentence of Redis'), and its arguments
in the notation ``redis-cli`` shows as hints, read by ``arguments``:

- ``name`` is an argument; its type is ``key`` for ``key``, ``integer`` for the names in
  ``_INTEGERS``, ``unix-time`` for ``unix-time-*``, ``pattern`` for ``pattern``, ``string`` for the
  rest, or as written after a colon (``increment:double``);
- an upper-case word is a token: alone it is a ``pure-token`` argument (``NX``), before an argument
  it is that argument's token (``EX seconds``, ``MATCH pattern``);
- ``name(a b)`` is a ``block`` of arguments, ``name(A|B c)`` a ``oneof`` of alternatives;
- ``[...]`` makes an argument optional, a trailing ``...`` repeats it.

Arguments carry Redis' names, types, tokens and flags (``optional``, ``multiple``), and keys their
key spec (Mezzo's commands have one each); the ``since`` of arguments and each command's history
are not kept. ``CLIENT LIST`` documents no filters: Mezzo lists every connection whatever follows.
"""

from __future__ import annotations

import re
from typing import Any

# name -> (summary, since, group, complexity, arguments); subcommands as "container|name"
DOCS: dict[str, tuple[str, str, str, str, str]] = {
    "append": ("Append a value to a key", "2.0.0", "string", "O(1)", "key value"),
    "auth": ("Authenticate to the server", "1.0.0", "connection",
             "O(N) where N is the number of passwords defined for the user", "[username] password"),
    "client": ("A container for client connection commands", "2.4.0", "connection", "Depends on subcommand.", ""),
    "client|getname": ("Get the current connection name", "2.6.9", "connection", "O(1)", ""),
    "client|id": ("Returns the client ID for the current connection", "5.0.0", "connection", "O(1)", ""),
    "client|list": ("Get the list of client connections", "2.4.0", "connection",
                    "O(N) where N is the number of client connections", ""),
    "client|setinfo": ("Sets information specific to the client or connection.", "7.2.0", "connection", "O(1)",
                       "attr(LIB-NAME libname|LIB-VER libver)"),
    "client|setname": ("Set the current connection name", "2.6.9", "connection", "O(1)", "connection-name"),
    "command": ("Get array of Redis command details", "2.8.13", "server",
                "O(N) where N is the total number of Redis commands", ""),
    "command|count": ("Get total number of Redis commands", "2.8.13", "server", "O(1)", ""),
    "command|docs": ("Get array of specific Redis command documentation", "7.0.0", "server",
                     "O(N) where N is the number of commands to look up", "[command-name...]"),
    "command|getkeys": ("Extract keys given a full Redis command", "2.8.13", "server",
                        "O(N) where N is the number of arguments to the command", ""),
    "command|getkeysandflags": ("Extract keys and access flags given a full Redis command", "7.0.0", "server",
                                "O(N) where N is the number of arguments to the command", ""),
    "command|help": ("Show helpful text about the different subcommands", "5.0.0", "server", "O(1)", ""),
    "command|info": ("Get array of specific Redis command details, or all when no argument is given.", "2.8.13",
                     "server", "O(N) where N is the number of commands to look up", "[command-name...]"),
    "command|list": ("Get an array of Redis command names", "7.0.0", "server",
                     "O(N) where N is the total number of Redis commands",
                     "[FILTERBY filterby(MODULE module-name|ACLCAT category|PATTERN pattern)]"),
    "config": ("A container for server configuration commands", "2.0.0", "server", "Depends on subcommand.", ""),
    "config|get": ("Get the values of configuration parameters", "2.0.0", "server",
                   "O(N) when N is the number of configuration parameters provided", "parameter(parameter)..."),
    "dbsize": ("Return the number of keys in the selected database", "1.0.0", "server", "O(1)", ""),
    "decr": ("Decrement the integer value of a key by one", "1.0.0", "string", "O(1)", "key"),
    "decrby": ("Decrement the integer value of a key by the given number", "1.0.0", "string", "O(1)",
               "key decrement"),
    "del": ("Delete a key", "1.0.0", "generic", "O(N) where N is the number of keys that will be removed.",
            "key..."),
    "echo": ("Echo the given string", "1.0.0", "connection", "O(1)", "message"),
    "exists": ("Determine if a key exists", "1.0.0", "generic", "O(N) where N is the number of keys to check.",
               "key..."),
    "expire": ("Set a key's time to live in seconds", "1.0.0", "generic", "O(1)",
               "key seconds [condition(NX|XX|GT|LT)]"),
    "expireat": ("Set the expiration for a key as a UNIX timestamp", "1.2.0", "generic", "O(1)",
                 "key unix-time-seconds [condition(NX|XX|GT|LT)]"),
    "expiretime": ("Get the expiration Unix timestamp for a key", "7.0.0", "generic", "O(1)", "key"),
    "flushall": ("Remove all keys from all databases", "1.0.0", "server",
                 "O(N) where N is the total number of keys in all databases", "[async(ASYNC|SYNC)]"),
    "flushdb": ("Remove all keys from the current database", "1.0.0", "server",
                "O(N) where N is the number of keys in the selected database", "[async(ASYNC|SYNC)]"),
    "get": ("Get the value of a key", "1.0.0", "string", "O(1)", "key"),
    "getdel": ("Get the value of a key and delete the key", "6.2.0", "string", "O(1)", "key"),
    "getex": ("Get the value of a key and optionally set its expiration", "6.2.0", "string", "O(1)",
              "key [expiration(EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds"
              "|PERSIST)]"),
    "getrange": ("Get a substring of the string stored at a key", "2.4.0", "string",
                 "O(N) where N is the length of the returned string.", "key start end"),
    "hdel": ("Delete one or more hash fields", "2.0.0", "hash",
             "O(N) where N is the number of fields to be removed.", "key field..."),
    "hello": ("Handshake with Redis", "6.0.0", "connection", "O(1)",
              "[arguments(protover [AUTH username_password(username password)] [SETNAME clientname])]"),
    "hexists": ("Determine if a hash field exists", "2.0.0", "hash", "O(1)", "key field"),
    "hget": ("Get the value of a hash field", "2.0.0", "hash", "O(1)", "key field"),
    "hgetall": ("Get all the fields and values in a hash", "2.0.0", "hash", "O(N) where N is the size of the hash.",
                "key"),
    "hincrby": ("Increment the integer value of a hash field by the given number", "2.0.0", "hash", "O(1)",
                "key field increment"),
    "hincrbyfloat": ("Increment the float value of a hash field by the given amount", "2.6.0", "hash", "O(1)",
                     "key field increment:double"),
    "hkeys": ("Get all the fields in a hash", "2.0.0", "hash", "O(N) where N is the size of the hash.", "key"),
    "hlen": ("Get the number of fields in a hash", "2.0.0", "hash", "O(1)", "key"),
    "hmget": ("Get the values of all the given hash fields", "2.0.0", "hash",
              "O(N) where N is the number of fields being requested.", "key field..."),
    "hmset": ("Set multiple hash fields to multiple values", "2.0.0", "hash",
              "O(N) where N is the number of fields being set.", "key field_value(field value)..."),
    "hset": ("Set the string value of a hash field", "2.0.0", "hash",
             "O(1) for each field/value pair added, so O(N) to add N field/value pairs when the command is called "
             "with multiple field/value pairs.", "key field_value(field value)..."),
    "hvals": ("Get all the values in a hash", "2.0.0", "hash", "O(N) where N is the size of the hash.", "key"),
    "incr": ("Increment the integer value of a key by one", "1.0.0", "string", "O(1)", "key"),
    "incrby": ("Increment the integer value of a key by the given amount", "1.0.0", "string", "O(1)",
               "key increment"),
    "incrbyfloat": ("Increment the float value of a key by the given amount", "2.6.0", "string", "O(1)",
                    "key increment:double"),
    "info": ("Get information and statistics about the server", "1.0.0", "server", "O(1)", "[section...]"),
    "keys": ("Find all keys matching the given pattern", "1.0.0", "generic",
             "O(N) with N being the number of keys in the database, under the assumption that the key names in the "
             "database and the given pattern have limited length.", "pattern"),
    "mget": ("Get the values of all the given keys", "1.0.0", "string",
             "O(N) where N is the number of keys to retrieve.", "key..."),
    "mset": ("Set multiple keys to multiple values", "1.0.1", "string", "O(N) where N is the number of keys to set.",
             "key_value(key value)..."),
    "object": ("A container for object introspection commands", "2.2.3", "generic", "Depends on subcommand.", ""),
    "object|encoding": ("Inspect the internal encoding of a Redis object", "2.2.3", "generic", "O(1)", "key"),
    "object|freq": ("Get the logarithmic access frequency counter of a Redis object", "4.0.0", "generic", "O(1)",
                    "key"),
    "object|help": ("Show helpful text about the different subcommands", "6.2.0", "generic", "O(1)", ""),
    "object|idletime": ("Get the time since a Redis object was last accessed", "2.2.3", "generic", "O(1)", "key"),
    "object|refcount": ("Get the number of references to the value of the key", "2.2.3", "generic", "O(1)", "key"),
    "persist": ("Remove the expiration from a key", "2.2.0", "generic", "O(1)", "key"),
    "pexpire": ("Set a key's time to live in milliseconds", "2.6.0", "generic", "O(1)",
                "key milliseconds [condition(NX|XX|GT|LT)]"),
    "pexpireat": ("Set the expiration for a key as a UNIX timestamp specified in milliseconds", "2.6.0", "generic",
                  "O(1)", "key unix-time-milliseconds [condition(NX|XX|GT|LT)]"),
    "pexpiretime": ("Get the expiration Unix timestamp for a key in milliseconds", "7.0.0", "generic", "O(1)", "key"),
    "ping": ("Ping the server", "1.0.0", "connection", "O(1)", "[message]"),
    "psetex": ("Set the value and expiration in milliseconds of a key", "2.6.0", "string", "O(1)",
               "key milliseconds value"),
    "pttl": ("Get the time to live for a key in milliseconds", "2.6.0", "generic", "O(1)", "key"),
    "quit": ("Close the connection", "1.0.0", "connection", "O(1)", ""),
    "scan": ("Incrementally iterate the keys space", "2.8.0", "generic", "O(1) for every call.",
             "cursor [MATCH pattern] [COUNT count] [TYPE type]"),
    "select": ("Change the selected database for the current connection", "1.0.0", "connection", "O(1)", "index"),
    "set": ("Set the string value of a key", "1.0.0", "string", "O(1)",
            "key value [condition(NX|XX)] [GET] [expiration(EX seconds|PX milliseconds|EXAT unix-time-seconds"
            "|PXAT unix-time-milliseconds|KEEPTTL)]"),
    "setex": ("Set the value and expiration of a key", "2.0.0", "string", "O(1)", "key seconds value"),
    "setnx": ("Set the value of a key, only if the key does not exist", "1.0.0", "string", "O(1)", "key value"),
    "setrange": ("Overwrite part of a string at key starting at the specified offset", "2.2.0", "string",
                 "O(1), not counting the time taken to copy the new string in place.", "key offset value"),
    "strlen": ("Get the length of the value stored in a key", "2.2.0", "string", "O(1)", "key"),
    "substr": ("Get a substring of the string stored at a key", "1.0.0", "string",
               "O(N) where N is the length of the returned string.", "key start end"),
    "ttl": ("Get the time to live for a key in seconds", "1.0.0", "generic", "O(1)", "key"),
    "type": ("Determine the type stored at key", "1.0.0", "generic", "O(1)", "key"),
    "unlink": ("Delete a key asynchronously in another thread. Otherwise it is just as DEL, but non blocking.",
               "4.0.0", "generic", "O(1) for each key removed regardless of its size.", "key..."),
}

# deprecated commands: name -> (deprecated since, replaced by)
DEPRECATED = {"hmset": ("4.0.0", "`HSET` with multiple field-value pairs"), "substr": ("2.0.0", "`GETRANGE`")}

# The subcommands of Mezzo's containers: name -> (arity, ACL categories), as redis-server gives them.
SUBCOMMANDS: dict[bytes, dict[bytes, tuple[int, str]]] = {
    b"client": {b"getname": (2, "slow connection"), b"id": (2, "slow connection"),
                b"list": (-2, "admin slow dangerous connection"), b"setinfo": (4, "slow connection"),
                b"setname": (3, "slow connection")},
    b"command": {sub: (arity, "slow connection") for sub, arity in [
        (b"count", 2), (b"docs", -2), (b"getkeys", -4), (b"getkeysandflags", -4), (b"help", 2), (b"info", -2),
        (b"list", -2)]},
    b"config": {b"get": (-3, "admin slow dangerous")},
    b"object": {b"encoding": (3, "keyspace read slow"), b"freq": (3, "keyspace read slow"),
                b"help": (2, "keyspace slow"), b"idletime": (3, "keyspace read slow"),
                b"refcount": (3, "keyspace read slow")},
}

# The flags of a key spec where they are not a reader's "RO access" or a writer's "RW update".
KEY_SPEC_FLAGS = {
    **dict.fromkeys(["exists", "hexists", "hlen", "strlen", "type", "object|encoding", "object|freq",
                     "object|idletime", "object|refcount"], "RO"),
    **dict.fromkeys(["decr", "decrby", "getex", "hincrby", "hincrbyfloat", "incr", "incrby", "incrbyfloat"],
                    "RW access update"),
    "set": "RW access update variable_flags",  # as GET makes them; OW update without it
    "append": "RW insert", "getdel": "RW access delete", "hdel": "RW delete", "del": "RM delete",
    "unlink": "RM delete", "mset": "OW update", "psetex": "OW update", "setex": "OW update", "setnx": "OW insert",
}
KEY_SPEC_NOTES = {"set": "RW and ACCESS due to the optional `GET` argument",
                  "getex": "RW and UPDATE because it changes the TTL"}

# Command tips, in redis-server's order.
TIPS = {
    **dict.fromkeys(["hgetall", "hkeys", "hvals", "command", "command|docs", "command|info", "command|list"],
                    "nondeterministic_output_order"),
    **dict.fromkeys(["ttl", "pttl", "client|list", "object|encoding", "object|freq", "object|idletime",
                     "object|refcount"], "nondeterministic_output"),
    **dict.fromkeys(["del", "exists", "unlink"], "request_policy:multi_shard response_policy:agg_sum"),
    "dbsize": "request_policy:all_shards response_policy:agg_sum",
    **dict.fromkeys(["flushall", "flushdb", "ping"], "request_policy:all_shards response_policy:all_succeeded"),
    "mset": "request_policy:multi_shard response_policy:all_succeeded", "mget": "request_policy:multi_shard",
    "info": "nondeterministic_output request_policy:all_shards response_policy:special",
    "keys": "request_policy:all_shards nondeterministic_output_order",
    "scan": "nondeterministic_output request_policy:special",
}

_INTEGERS = {"seconds", "milliseconds", "decrement", "increment", "start", "end", "offset", "cursor", "count",
             "index", "protover"}
_WORDS = re.compile(r"\.\.\.|[\[\]()|]|[\w:-]+")


def arguments(syntax: str) -> list[dict[str, Any]]:
    """The arguments ``syntax`` (the notation of ``DOCS``) describes, as ``COMMAND DOCS`` gives them."""
    words = _WORDS.findall(syntax)
    found, end = _sequence(words, 0)
    if end != len(words):
        raise ValueError(f"unexpected {words[end]!r} in {syntax!r}")
    return found


def _sequence(words: list[str], i: int) -> tuple[list[dict[str, Any]], int]:
    found = []
    while i < len(words) and words[i] not in ")|]":
        arg, i = _argument(words, i)
        found.append(arg)
    return found, i


def _lower(word: str) -> bool:
    return word[0] not in "[]()|." and not word.isupper()


def _argument(words: list[str], i: int) -> tuple[dict[str, Any], int]:
    optional = words[i] == "["
    i += optional
    word, token = words[i], None
    i += 1
    if word.isupper() and i < len(words) and _lower(words[i]):
        token, word = word, words[i]
        i += 1
    inner: list[dict[str, Any]] | None = None
    if word.isupper():
        name, kind, token = word.lower(), "pure-token", word
    elif i < len(words) and words[i] == "(":
        name, kind, alternatives = word, "block", []
        while words[i] != ")":
            part, i = _sequence(words, i + 1)
            alternatives.append(part)
        i += 1
        if len(alternatives) > 1:
            kind = "oneof"
            inner = [part for alternative in alternatives for part in alternative]
        else:
            inner = alternatives[0]
    else:
        name, _, kind = word.partition(":")
        kind = kind or ("key" if name == "key" else "integer" if name in _INTEGERS else
                        "unix-time" if name.startswith("unix-time") else "pattern" if name == "pattern" else "string")
    flags = ["optional"] if optional else []
    if i < len(words) and words[i] == "...":
        flags.append("multiple")
        i += 1
    if optional:
        if words[i] != "]":
            raise ValueError(f"expected ']' at {words[i]!r}")
        i += 1
    arg: dict[str, Any] = {"name": name, "type": kind}
    if kind == "key":
        arg["key_spec_index"] = 0
    if token:
        arg["token"] = token
    if flags:
        arg["flags"] = flags
    if inner is not None:
        arg["arguments"] = inner
    return arg, i


PARSED = {name: arguments(entry[4]) for name, entry in DOCS.items()}


def raw_map(s: Any, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A map of encoded values: a RESP3 map, or in RESP2 the flat array Redis sends."""
    head = b"%%%d\r\n" % len(pairs) if s.resp3 else b"*%d\r\n" % (2 * len(pairs))
    return head + b"".join(s.bulk(k) + v for k, v in pairs)


def status_set(s: Any, words: list[str]) -> bytes:
    """A set of simple strings (flags): a RESP3 set, or an array in RESP2."""
    return (b"~%d\r\n" if s.resp3 else b"*%d\r\n") % len(words) + b"".join(b"+%s\r\n" % w.encode() for w in words)


def _argument_reply(s: Any, arg: dict[str, Any]) -> bytes:
    pairs = []
    for field, value in arg.items():
        if field == "key_spec_index":
            encoded = b":%d\r\n" % value
        elif field == "flags":
            encoded = status_set(s, value)
        elif field == "arguments":
            encoded = s.raw_array([_argument_reply(s, a) for a in value])
        else:
            encoded = s.bulk(value.encode())
        pairs.append((field.encode(), encoded))
    return raw_map(s, pairs)


def doc_reply(s: Any, name: str) -> bytes:
    """``COMMAND DOCS``' map for one command or subcommand (which must be in ``DOCS``)."""
    summary, since, group, complexity, _ = DOCS[name]
    pairs = [(b"summary", s.bulk(summary.encode())), (b"since", s.bulk(since.encode())),
             (b"group", s.bulk(group.encode())), (b"complexity", s.bulk(complexity.encode()))]
    if name in DEPRECATED:
        deprecated_since, replaced_by = DEPRECATED[name]
        pairs += [(b"doc_flags", status_set(s, ["deprecated"])), (b"deprecated_since", s.bulk(deprecated_since.encode())),
                  (b"replaced_by", s.bulk(replaced_by.encode()))]
    if PARSED[name]:
        pairs.append((b"arguments", s.raw_array([_argument_reply(s, a) for a in PARSED[name]])))
    subcommands = SUBCOMMANDS.get(name.encode())
    if subcommands:
        pairs.append((b"subcommands", raw_map(s, [(b"%s|%s" % (name.encode(), sub),
                                                   doc_reply(s, f"{name}|{sub.decode()}")) for sub in sorted(subcommands)])))
    return raw_map(s, pairs)


def docs_reply(s: Any, names: list[bytes]) -> bytes:
    """``COMMAND DOCS name ...``: a map of the names known, in lower case, unknown ones left out
    and a name asked for twice given twice (as Redis answers)."""
    known = [name for name in (raw.lower().decode(errors="replace") for raw in names) if name in DOCS]
    return raw_map(s, [(n.encode(), doc_reply(s, n)) for n in known])
