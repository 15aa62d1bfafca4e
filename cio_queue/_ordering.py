"""Ordering: which people an operation that overwrites their state is about.

Stage: dispatch. The dispatcher sends one person's state changes (identify, delete,
suppress, devices, merges) in the order they were accepted and lets events, which carry
their own time, pass; a fleet partitions its stream by the same keys. The keys use the
identifier type the API reads from a v1 path (``person_identifiers``), so ``"42"`` and
``"ada@example.com"`` are two different people here, as they are two different
identifiers to the API until a merge joins them.
"""

from __future__ import annotations

from typing import Any, Final

from ._operations import RAW_KIND, Operation, person_identifiers

__all__ = ["MAY_BE_ORDERED", "ORDERED_KINDS", "order_keys"]


ORDERED_KINDS: Final = frozenset({"identify", "delete", "suppress", "unsuppress",
                                  "add_device", "delete_device", "merge_customers"})
"""Operations that overwrite a person's state, so their order matters."""
MAY_BE_ORDERED: Final = ORDERED_KINDS | {RAW_KIND}
"""The kinds for which :func:`order_keys` may name people (a v2 element's depends on its
action): it names none for any other, such as the events."""


def order_keys(op: Operation) -> tuple[tuple[str, str], ...]:
    """The people an operation that overwrites state is about, as (identifier type, value).

    Empty for events, which carry their own time and are not ordered. A merge names two.
    """
    if op.kind == RAW_KIND:
        return _raw_order_keys(op.payload)
    if op.kind not in ORDERED_KINDS:
        return ()
    if op.kind == "merge_customers":
        return tuple(dict.fromkeys((kind, str(value)) for side in ("primary", "secondary")
                                   for kind, value in op.payload[side].items()))
    ((kind, value),) = person_identifiers(op.customer_id).items()
    return ((kind, value),)


_RAW_ORDERED_ACTIONS: Final = frozenset({
    "identify", "delete", "suppress", "unsuppress", "add_device", "delete_device", "merge",
    "add_relationships", "delete_relationships"})


def _raw_order_keys(element: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The people a v2 person operation that overwrites state is about."""
    if element.get("type") != "person" or element.get("action") not in _RAW_ORDERED_ACTIONS:
        return ()
    sides = [element.get(name) for name in ("identifiers", "primary", "secondary")]
    return tuple(dict.fromkeys((str(kind), str(value)) for side in sides
                               if isinstance(side, dict) for kind, value in side.items()))
