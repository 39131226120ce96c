"""The option schema (attnprune.methods.options): kinds, ranges, choices, help, inheritance."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest

import attnprune.methods
from attnprune.methods.base import TrainConfig
from attnprune.methods.options import option, option_specs, validate


@dataclass(frozen=True)
class Toy(TrainConfig):
    """A config with one option of every kind.

    Attributes:
        flag: A bool.
        count: An int >= 1.
        scale: A number in (0, 1].
        name: One of three strings.
        limit: An int >= 0, or None.
        text: Any string.
    """

    flag: bool = option(False)
    count: int = option(2, low=1)
    scale: float = option(0.5, low=0, high=1, low_open=True)
    name: str = option("a", choices=("a", "b", "c"))
    limit: int | None = option(None, low=0)
    text: str = option("hello")


@dataclass(frozen=True)
class ToyChild(Toy):
    """Only a default changes; the range stays the base's."""

    count: int = 5


def _spec(cls, name):
    return next(s for s in option_specs(cls) if s.name == name)


def test_kinds_and_help_come_from_annotations_and_docstring():
    specs = {s.name: s for s in option_specs(Toy)}
    assert (specs["flag"].kind, specs["count"].kind, specs["scale"].kind, specs["name"].kind) == (bool, int, float, str)
    assert specs["limit"].kind is int and specs["limit"].optional and not specs["count"].optional
    assert specs["scale"].help == "A number in (0, 1]."
    assert specs["lr"].help.startswith("Learning rate")  # inherited from TrainConfig's docstring


@pytest.mark.parametrize("field, good", [
    ("flag", True), ("count", 1), ("count", 10**6), ("scale", 1.0), ("scale", 1e-9), ("scale", 1),
    ("name", "c"), ("limit", None), ("limit", 0), ("text", ""),
])
def test_valid_values_pass(field, good):
    Toy(**{field: good})


@pytest.mark.parametrize("field, bad, words", [
    ("flag", 1, "True or False"),          # an int is not a bool
    ("flag", "yes", "True or False"),
    ("count", 0, "an int >= 1"),           # closed lower bound: 1 is valid, 0 is not
    ("count", 2.0, "an int >= 1"),         # a float is not an int
    ("count", True, "an int >= 1"),        # a bool is not a number
    ("count", None, "an int >= 1"),        # not optional
    ("scale", 0.0, "a number > 0 and <= 1"),   # open lower bound
    ("scale", 0, "a number > 0 and <= 1"),
    ("scale", 1.0000001, "a number > 0 and <= 1"),
    ("scale", True, "a number"),           # bool rejected as a number
    ("scale", math.inf, "(finite)"),
    ("scale", math.nan, "(finite)"),
    ("scale", "0.5", "a number"),
    ("name", "d", "one of ('a', 'b', 'c')"),
    ("name", None, "one of"),
    ("limit", -1, "an int >= 0 or None"),
    ("limit", 1.5, "an int >= 0 or None"),
    ("text", 3, "a string"),
])
def test_invalid_values_name_the_option_and_what_it_accepts(field, bad, words):
    with pytest.raises(ValueError) as info:
        Toy(**{field: bad})
    msg = str(info.value)
    assert msg.startswith(f"option {field!r} of Toy must be ")
    assert words in msg and repr(bad) in msg


def test_open_upper_bound():
    @dataclass(frozen=True)
    class Unit(TrainConfig):
        """Attributes:
            p: A probability below 1.
        """

        p: float = option(0.5, low=0, high=1, high_open=True)

    Unit(p=0.0)
    with pytest.raises(ValueError, match=r"'p' of Unit must be a number >= 0 and < 1"):
        Unit(p=1.0)


def test_subclass_overriding_a_default_keeps_the_base_range():
    assert ToyChild().count == 5
    assert (_spec(ToyChild, "count").low, _spec(ToyChild, "count").default) == (1, 5)
    with pytest.raises(ValueError, match="'count' of ToyChild must be an int >= 1"):
        ToyChild(count=0)
    assert _spec(ToyChild, "count").help == "An int >= 1."


def test_validate_checks_a_modified_instance():
    cfg = Toy()
    object.__setattr__(cfg, "scale", -1.0)
    with pytest.raises(ValueError, match="'scale' of Toy"):
        validate(cfg)


def test_describe_reads_the_range():
    assert _spec(Toy, "scale").describe() == "a number > 0 and <= 1 (finite)"
    assert _spec(Toy, "limit").describe() == "an int >= 0 or None"
    assert _spec(Toy, "name").describe() == "one of ('a', 'b', 'c')"


@pytest.mark.parametrize("name", sorted(attnprune.methods.METHODS))
def test_every_registered_option_has_help_and_a_valid_default(name):
    cls = attnprune.methods.METHODS[name].config_class
    specs = option_specs(cls)
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(cls)]
    for spec in specs:
        assert spec.help.strip(), f"option {spec.name!r} of {name} has no help (add it to Attributes:)"
        spec.check(spec.default, cls.__name__)  # the default passes its own schema
    validate(cls())  # and so does the default config as a whole
