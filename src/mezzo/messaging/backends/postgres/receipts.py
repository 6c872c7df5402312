"""Receipts: ``partition:offset:attempt:delivery``, where delivery is unique per handing-out.

A new attempt, a seek, or a deleted and re-created group all give new delivery numbers,
so a receipt from before any of them no longer matches its entry and is stale.
"""

from __future__ import annotations

from typing import NamedTuple


class Receipt(NamedTuple):
    partition: int
    offset: int
    attempt: int
    delivery: int


def make_receipt(partition: int, offset: int, attempt: int, delivery: int) -> str:
    return f"{partition}:{offset}:{attempt}:{delivery}"


def parse_receipt(receipt: str) -> Receipt | None:
    """The parts of a well-formed receipt (in the ranges the tables hold); None for anything else."""
    parts = receipt.split(":")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    if len(parts[0]) > 9 or len(parts[2]) > 9 or len(parts[1]) > 18 or len(parts[3]) > 18:
        return None
    partition, offset, attempt, delivery = (int(p) for p in parts)
    return Receipt(partition, offset, attempt, delivery)


def receipt_arrays(receipts: list[str]) -> tuple[dict[tuple[int, int, int], list[str]], list[list[int]]]:
    """Valid receipts by (partition, offset, delivery), and the three columns to pass as arrays."""
    wanted: dict[tuple[int, int, int], list[str]] = {}
    for receipt in receipts:
        parsed = parse_receipt(receipt)
        if parsed is not None:
            wanted.setdefault((parsed.partition, parsed.offset, parsed.delivery), []).append(receipt)
    columns: list[list[int]] = [[k[0] for k in wanted], [k[1] for k in wanted], [k[2] for k in wanted]]
    return wanted, columns
