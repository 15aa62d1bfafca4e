"""Run-time checks compiled from type annotations: the opt-in ``validate_events=True``.

Stage: intake, before ``_operations``. :func:`compile_check` turns an annotation (a
TypedDict, usually) into a function that returns quietly or raises :class:`MismatchError`
with the path of the first wrong value. Compiling walks the annotations once, when the
queue is made, so a call pays only for the values it passes: a type test per value, a
dict lookup per key, and nothing to build a path unless one is wrong.

The forms checked are the ones event data and attributes are written in: ``str``,
``int``, ``float``, ``bool``, ``None``, ``datetime`` and other plain classes (by
``isinstance``), ``Any`` and ``object`` (anything), ``Literal``, unions, ``list``,
``tuple``, ``Sequence``, ``dict`` and ``Mapping`` with str keys, and nested TypedDicts
(recursive ones too), through ``Annotated``, ``Required``, ``NotRequired``,
``ReadOnly`` and ``NewType``. Any other form raises TypeError when compiled, rather than
pass unchecked. Two places are stricter than a type checker, on purpose: a bool is not
an int or a float here (JSON would send ``true``, not a number), and a TypedDict refuses
keys it does not declare (a checker allows them in a value typed as a subtype).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

from ._validation import describe

__all__ = ["Check", "MismatchError", "compile_check"]

Check = Callable[[object], None]
"""Return if the value fits the compiled annotation; raise MismatchError where it does not."""


class MismatchError(Exception):
    """A value does not fit; ``path`` is relative (``".items[2].price"``), prefixed upward."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _prefixed(exc: MismatchError, step: str) -> MismatchError:
    exc.path = step + exc.path
    return exc


# Wrappers that say something about a key, or carry metadata, not about the value's type.
# Matched by name too, so that typing_extensions' ReadOnly is known before Python 3.13.
_QUALIFIERS: Final = frozenset({"Required", "NotRequired", "ReadOnly"})


def strip(annotation: Any) -> Any:
    """Return the type inside ``Annotated``/``Required``/... wrappers and NewTypes."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated or getattr(origin, "_name", None) in _QUALIFIERS:
            annotation = typing.get_args(annotation)[0]
        elif hasattr(annotation, "__supertype__"):  # a NewType
            annotation = annotation.__supertype__
        else:
            return annotation


def _anything(value: object) -> None:
    return None


def _none(value: object) -> None:
    if value is not None:
        raise MismatchError("", f"must be None, not {describe(value)}")


def _int(value: object) -> None:
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        raise MismatchError("", f"must be an int, not {describe(value)}")


def _float(value: object) -> None:
    if type(value) is not float and (not isinstance(value, int | float)
                                     or isinstance(value, bool)):
        raise MismatchError("", f"must be a float, not {describe(value)}")


def _instance(cls: type) -> Check:
    name = cls.__name__

    def check(value: object) -> None:
        if not isinstance(value, cls):
            raise MismatchError("", f"must be {name}, not {describe(value)}")
    return check


_SCALARS: Final[dict[object, Check]] = {
    Any: _anything, object: _anything, None: _none, types.NoneType: _none,
    int: _int, float: _float,
}


def exact_types(annotation: Any) -> frozenset[type]:
    """Return types whose every instance fits ``annotation`` (without a subclass's quirks).

    Containers test ``type(value) in`` these before calling a value's check, so a str or
    a number costs a set lookup and never an exception (a union's failed branches would).
    """
    annotation = strip(annotation)
    if annotation is None or annotation is types.NoneType:
        return frozenset({types.NoneType})
    if annotation is float:
        return frozenset({float, int})
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return frozenset[type]().union(*map(exact_types, typing.get_args(annotation)))
    if (origin is None and isinstance(annotation, type) and annotation is not Any
            and not typing.is_typeddict(annotation)):
        return frozenset({annotation})
    return frozenset()


def _literal(args: tuple[Any, ...], compile_arg: Callable[[Any], Check]) -> Check:
    # By type as well as value: Literal[1] must not take True, nor Literal[True] take 1.
    allowed = frozenset((type(arg), arg) for arg in args)
    shown = ", ".join(repr(arg) for arg in args)

    def check(value: object) -> None:
        try:
            if (type(value), value) in allowed:
                return
        except TypeError:  # unhashable: a list or dict is never a literal
            pass
        raise MismatchError("", f"must be one of {shown}, not {describe(value)}")
    return check


def _union(args: tuple[Any, ...], compile_arg: Callable[[Any], Check]) -> Check:
    branches = [compile_arg(arg) for arg in args]
    shown = " | ".join("None" if arg is types.NoneType else getattr(arg, "__name__", repr(arg))
                       for arg in args)
    quick = frozenset[type]().union(*map(exact_types, args))

    def check(value: object) -> None:
        if type(value) in quick:
            return
        deepest: MismatchError | None = None
        for branch in branches:
            try:
                branch(value)
            except MismatchError as exc:
                if exc.path and deepest is None:
                    deepest = exc  # the value had this branch's shape; say what is inside
            else:
                return
        raise deepest or MismatchError("", f"must be {shown}, not {describe(value)}")
    return check


def _items(kinds: type | tuple[type, ...], noun: str, args: tuple[Any, ...],
           compile_arg: Callable[[Any], Check]) -> Check:
    item = compile_arg(args[0]) if args else _anything
    quick = exact_types(args[0]) if args else frozenset()

    def check(value: object) -> None:
        if not isinstance(value, kinds):
            raise MismatchError("", f"must be {noun}, not {describe(value)}")
        for index, element in enumerate(cast("Iterable[object]", value)):
            if type(element) in quick:
                continue
            try:
                item(element)
            except MismatchError as exc:
                raise _prefixed(exc, f"[{index}]") from None
    return check


def _list(args: tuple[Any, ...], compile_arg: Callable[[Any], Check]) -> Check:
    return _items(list, "a list", args, compile_arg)


def _sequence(args: tuple[Any, ...], compile_arg: Callable[[Any], Check]) -> Check:
    return _items((list, tuple), "a list", args, compile_arg)


def _tuple(args: tuple[Any, ...], compile_arg: Callable[[Any], Check]) -> Check:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        return _items(tuple, "a tuple", args[:1], compile_arg)
    fixed = [compile_arg(arg) for arg in args]

    def check(value: object) -> None:
        if not isinstance(value, tuple) or len(value) != len(fixed):
            raise MismatchError("", f"must be a tuple of {len(fixed)}, not {describe(value)}")
        for index, (element, item) in enumerate(zip(value, fixed, strict=True)):
            try:
                item(element)
            except MismatchError as exc:
                raise _prefixed(exc, f"[{index}]") from None
    return check


def _mapping(args: tuple[Any, ...], compile_arg: Callable[[Any], Check]) -> Check:
    item = compile_arg(args[1]) if args else _anything
    quick = exact_types(args[1]) if args else frozenset()

    def check(value: object) -> None:
        if not isinstance(value, dict):
            raise MismatchError("", f"must be a dict, not {describe(value)}")
        for key, element in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise MismatchError("", f"must have str keys, not {describe(key)}")
            if type(element) in quick:
                continue
            try:
                item(element)
            except MismatchError as exc:
                raise _prefixed(exc, f".{key}") from None
    return check


_Builder = Callable[[tuple[Any, ...], Callable[[Any], Check]], Check]
_GENERICS: Final[dict[object, _Builder]] = {
    typing.Literal: _literal, typing.Union: _union, types.UnionType: _union,
    list: _list, tuple: _tuple, Sequence: _sequence, dict: _mapping, Mapping: _mapping,
}


class _TypedDictCheck:
    """Check a dict against a TypedDict: required keys present, no undeclared key, values.

    Filled in after it is registered, so that a TypedDict that contains itself compiles.
    """

    __slots__ = ("fields", "name", "quick", "required")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: dict[str, Check] = {}
        self.quick: dict[str, frozenset[type]] = {}
        self.required: frozenset[str] = frozenset()

    def __call__(self, value: object) -> None:
        if not isinstance(value, dict):
            raise MismatchError("", f"must be a dict ({self.name}), not {describe(value)}")
        if not self.required <= value.keys():
            missing = min(self.required - value.keys())
            raise MismatchError(f".{missing}", f"is required by {self.name}")
        quick = self.quick
        for key, element in value.items():
            exact = quick.get(key)
            if exact is None:
                raise MismatchError(f".{key}", f"is not declared in {self.name}")
            if type(element) in exact:
                continue
            try:
                self.fields[key](element)
            except MismatchError as exc:
                raise _prefixed(exc, f".{key}") from None


def _required(typeddict: Any, key: str, annotation: Any) -> bool:
    # With ``from __future__ import annotations`` Python 3.11 cannot see Required and
    # NotRequired inside the strings, so __required_keys__ is wrong for those keys
    # (but right for the rest, which follow their class's totality).
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Required or origin is typing.NotRequired:
            return origin is typing.Required
        if origin is not typing.Annotated and getattr(origin, "_name", None) != "ReadOnly":
            return key in typeddict.__required_keys__
        annotation = typing.get_args(annotation)[0]


class _Compiler:
    """Compile annotations, each TypedDict once (so recursive ones terminate)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.typeddicts: dict[object, _TypedDictCheck] = {}

    def compile(self, annotation: Any) -> Check:
        annotation = strip(annotation)
        scalar = _SCALARS.get(annotation) if _hashable(annotation) else None
        if scalar is not None:
            return scalar
        if typing.is_typeddict(annotation):
            return self.typeddict(annotation)
        origin = typing.get_origin(annotation)
        builder = _GENERICS.get(origin) if origin is not None else None
        if builder is not None:
            return builder(typing.get_args(annotation), self.compile)
        if isinstance(annotation, type) and origin is None:
            return _instance(annotation)
        raise TypeError(f"{self.where}: {annotation!r} cannot be checked at run time; use a "
                        "TypedDict, a plain class, Literal, a union, list, tuple or dict")

    def typeddict(self, typeddict: Any) -> Check:
        known = self.typeddicts.get(typeddict)
        if known is not None:
            return known
        check = self.typeddicts[typeddict] = _TypedDictCheck(typeddict.__name__)
        try:
            hints = typing.get_type_hints(typeddict, include_extras=True)
        except NameError as exc:
            raise TypeError(f"{self.where}: the annotations of {typeddict.__name__} cannot be "
                            f"resolved ({exc}); define the types they name at module level"
                            ) from exc
        outer = self.where
        for key, value in hints.items():
            self.where = f"{typeddict.__name__}.{key}"
            check.fields[key] = self.compile(value)
            check.quick[key] = exact_types(value)
        self.where = outer
        check.required = frozenset(key for key, value in hints.items()
                                   if _required(typeddict, key, value))
        return check


def _hashable(annotation: object) -> bool:
    try:
        hash(annotation)
    except TypeError:
        return False
    return True


def compile_check(annotation: Any, where: str) -> Check:
    """Return a check for values of ``annotation``; ``where`` names it in a TypeError.

    Raises:
        TypeError: the annotation has a form that cannot be checked at run time, or names
            a type that cannot be resolved.
    """
    return _Compiler(where).compile(annotation)
