"""How fast this machine runs Python right now, printed before and after a benchmark.

This machine has slow spells in which the interpreter runs about twice as slowly as usual while C
programs (nginx, redis-server, PostgreSQL) slow down much less, so a ratio taken in a slow spell
is not comparable with one taken in a normal hour. Every benchmark prints this line at its start
and end; compare runs only when it reads about the same.

    .venv/bin/python bench/machine.py      # the line alone (the shell benchmarks call this)
"""

from __future__ import annotations

import contextlib
import timeit
from collections.abc import Iterator

USUAL_US = 9.0  # this machine's usual figure in a normal hour (8-9 µs)


def speed_us() -> float:
    """Best of five: microseconds for ``sum(range(1000))`` (what ``python -m timeit`` prints)."""
    timer = timeit.Timer("sum(range(1000))")
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def line(when: str = "now") -> str:
    us = speed_us()
    verdict = "normal" if us <= USUAL_US * 1.3 else f"a slow spell, {us / USUAL_US:.1f}x the usual"
    return f"machine speed {when}: sum(range(1000)) in {us:.1f} µs ({verdict}; usual 8-9 µs)"


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Print the machine's speed before and after the block."""
    print(line("before"), flush=True)
    try:
        yield
    finally:
        print(line("after"), flush=True)


if __name__ == "__main__":
    import sys

    print(line(sys.argv[1] if len(sys.argv) > 1 else "now"))
