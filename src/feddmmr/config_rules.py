"""What a config value may be: its type (from the field's annotation, checked strictly: no `True`
for 1, no "64" for 64, no 2.7 for a whole number) and its rule (a range, a choice set or a
format), stated once per field so that the check, the error and `--help` say the same."""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(ValueError):
    """One setting is wrong: `field` names it, `problem` says what was expected and found."""

    def __init__(self, field: str, problem: str, where: str | None = None) -> None:
        self.field, self.problem, self.where = field, problem, where or field
        super().__init__(f"{self.where}: {problem}")

    def at(self, where: str) -> "ConfigError":
        """The same error, naming where the value came from (a flag, or a key in a file)."""
        return ConfigError(self.field, self.problem, where)


@dataclass(frozen=True)
class Between:
    """A number in a range; `low_open`/`high_open`: the bound itself is excluded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: Any) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def at_least(low: float) -> Between:
    return Between(low)


def above(low: float) -> Between:
    return Between(low, low_open=True)


@dataclass(frozen=True)
class OneOf:
    """A value from a fixed set, or from a registry read when checked (`choices` a function)."""

    choices: tuple | Callable[[], tuple]

    def options(self) -> tuple:
        return self.choices() if callable(self.choices) else self.choices

    def allows(self, value: Any) -> bool:
        return value in self.options()

    def __str__(self) -> str:
        return "one of " + ", ".join(map(str, self.options()))


@dataclass(frozen=True)
class Matches:
    """A string of a stated form."""

    pattern: str
    description: str

    def allows(self, value: Any) -> bool:
        return re.fullmatch(self.pattern, value) is not None

    def __str__(self) -> str:
        return self.description


Rule = typing.Union[Between, OneOf, Matches]


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{shown if len(shown) <= 60 else shown[:57] + '...'} ({kind})"


_TYPE_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def checked_value(name: str, value: Any, annotation: Any, rule: Rule) -> Any:
    """`value` if it has the annotated type and keeps its rule, as the field stores it (an int for
    a float field becomes a float; one string for a list of strings becomes a list of one);
    otherwise a `ConfigError` naming `name`, what was expected and what was found."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = len(arguments) < len(typing.get_args(annotation)), arguments[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(
            name, f"expected {_expected(annotation, rule)}, got null (this setting has no 'off' value)"
        )
    if typing.get_origin(annotation) is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ConfigError(name, f"expected a list of strings ({rule}), got {_describe(value)}")
        for item in items:
            if not rule.allows(item):
                raise ConfigError(name, f"expected {rule}, got {item!r}")
        return list(items)
    expected_type = annotation
    if expected_type is float and type(value) is int:
        value = float(value)
    if type(value) is not expected_type:  # exact: a bool is no number, a float no whole number
        raise ConfigError(name, f"expected {_expected(expected_type, rule)}, got {_describe(value)}")
    if expected_type is float and not math.isfinite(value):
        raise ConfigError(name, f"expected a finite number {rule}, got {value}")
    if not rule.allows(value):
        raise ConfigError(name, f"expected {_expected(expected_type, rule)}, got {value!r}")
    return value


def _expected(annotation: Any, rule: Rule) -> str:
    if annotation is bool:
        return "true or false"
    if isinstance(rule, (OneOf, Matches)):
        return str(rule)
    return f"{_TYPE_NAMES.get(annotation, annotation)} {rule}"
