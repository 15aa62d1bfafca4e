"""The run-time checks compiled from annotations (``validate_events=True``): pure, sync."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, NewType, NotRequired, Required, TypedDict, TypeVar

import pytest
from typing_extensions import ReadOnly

from cio_queue._schema import MismatchError, compile_check

UserId = NewType("UserId", str)


class Color(StrEnum):
    """A str subclass."""

    RED = "red"


class Size(IntEnum):
    """An int subclass."""

    BIG = 3
T = TypeVar("T")


class Line(TypedDict):
    """A nested TypedDict."""

    sku: str
    quantity: int


class Order(TypedDict):
    """Required, NotRequired (invisible to Python 3.11 in a string annotation) and a list."""

    total: float
    lines: list[Line]
    coupon: NotRequired[str]
    note: ReadOnly[NotRequired[str | None]]


class Profile(TypedDict, total=False):
    """Optional keys, one made Required."""

    email: Required[str]
    tags: Sequence[str]


class Tree(TypedDict):
    """A TypedDict that contains itself."""

    name: str
    children: list[Tree]


class Sale(TypedDict):
    """One branch of a union."""

    kind: Literal["sale"]
    amount: float


class Refund(TypedDict):
    """The other branch."""

    kind: Literal["refund"]
    reason: str


class Broken(TypedDict):
    """Names a type that does not exist."""

    when: Undefined  # type: ignore[name-defined]  # noqa: F821


def refusal(annotation: Any, value: object) -> tuple[str, str]:
    """Return (path, message) of the check's refusal of ``value``."""
    with pytest.raises(MismatchError) as caught:
        compile_check(annotation, "test")(value)
    return caught.value.path, caught.value.message


@pytest.mark.parametrize(("annotation", "value"), [
    (str, "text"), (int, 3), (float, 2.5), (float, 2), (bool, False), (None, None),
    (Any, object()), (object, [1]), (datetime, datetime.now(UTC)), (UserId, "u-1"),
    (Annotated[int, "metadata"], 1), (Literal["a", 1], 1), (int | None, None),
    (list[int], [1, 2]), (Sequence[str], ("a", "b")), (tuple[int, ...], (1, 2, 3)),
    (tuple[int, str], (1, "a")), (dict[str, int], {"a": 1}), (Mapping[str, Any], {"a": []}),
    (list, [1, "a"]), (Order, {"total": 9, "lines": [{"sku": "A", "quantity": 1}]}),
    (Order, {"total": 9.5, "lines": [], "coupon": "X", "note": None}),
    (Profile, {"email": "a@b.c"}), (Tree, {"name": "a", "children": [{"name": "b",
                                                                      "children": []}]}),
    (Sale | Refund, {"kind": "refund", "reason": "late"}),
    (str | None, Color.RED), (Sequence[str], [Color.RED]), (int, Size.BIG),  # subclasses
    (dict, {1: 2}), (dict[str, float], {"a": 1, "b": 2.5}),
])
def test_values_that_fit_pass(annotation: Any, value: object) -> None:
    """Each supported form accepts the values a checker accepts."""
    compile_check(annotation, "test")(value)


@pytest.mark.parametrize(("annotation", "value", "path", "message"), [
    (str, 1, "", "must be str, not 1"),
    (int, True, "", "must be an int, not True"),  # JSON would send true
    (float, False, "", "must be a float, not False"),
    (float, "9.5", "", "must be a float, not '9.5'"),
    (None, 0, "", "must be None, not 0"),
    (Literal[1], True, "", "must be one of 1, not True"),
    (Literal["a"], ["a"], "", "must be one of 'a', not list"),
    (int | None, "1", "", "must be int | None, not '1'"),
    (float | None, True, "", "must be float | None, not True"),
    (list[float], [1, True], "[1]", "must be a float, not True"),
    (list[int], (1,), "", "must be a list, not tuple"),
    (list[int], [1, "2"], "[1]", "must be an int, not '2'"),
    (tuple[int, str], (1, 2), "[1]", "must be str, not 2"),
    (tuple[int, str], (1,), "", "must be a tuple of 2, not tuple"),
    (dict[str, int], {"a": "1"}, ".a", "must be an int, not '1'"),
    (dict[str, int], {1: 1}, "", "must have str keys, not 1"),
    (Order, [], "", "must be a dict (Order), not list"),
    (Order, {"lines": []}, ".total", "is required by Order"),
    (Order, {"total": 1, "lines": [], "cupon": "X"}, ".cupon", "is not declared in Order"),
    (Order, {"total": 1, "lines": [{"sku": "A", "quantity": 1.5}]}, ".lines[0].quantity",
     "must be an int, not 1.5"),
    (Order, {"total": 1, "lines": [], "note": 3}, ".note", "must be str | None, not 3"),
    (Profile, {"tags": ["a"]}, ".email", "is required by Profile"),
    (Profile, {"email": "a", "tags": "ab"}, ".tags", "must be a list, not 'ab'"),
    (Tree, {"name": "a", "children": [{"name": 1, "children": []}]}, ".children[0].name",
     "must be str, not 1"),
    # A union of TypedDicts reports inside the branch the value was shaped like.
    (Sale | Refund, {"kind": "sale", "amount": "9"}, ".amount", "must be a float, not '9'"),
])
def test_values_that_do_not_fit_are_refused_with_their_path(
        annotation: Any, value: object, path: str, message: str) -> None:
    """A refusal names the first wrong value by its path and says what was expected."""
    assert refusal(annotation, value) == (path, message)


@pytest.mark.parametrize(("annotation", "fragment"), [
    (Callable[[int], int], "cannot be checked at run time"),
    (T, "cannot be checked at run time"),
    (set[int], "cannot be checked at run time"),
    (Broken, "cannot be resolved"),
])
def test_forms_it_cannot_check_fail_when_compiled(annotation: Any, fragment: str) -> None:
    """An annotation the check does not understand is an error up front, never a pass."""
    with pytest.raises(TypeError, match=fragment):
        compile_check(annotation, "Acme.purchase")
