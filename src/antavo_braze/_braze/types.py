"""The Braze custom-attribute types."""

from __future__ import annotations

import enum

__all__ = ["BrazeType", "BrazeTypeLike"]


class BrazeType(str, enum.Enum):
    """A Braze custom-attribute type; anywhere a type is accepted, its string value works too."""

    NUMBER = "number"
    STRING = "string"
    ARRAY = "array"
    BOOLEAN = "boolean"
    OBJECT = "object"
    ARRAY_OF_OBJECTS = "array_of_objects"
    DATE = "date"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: BrazeTypeLike) -> BrazeType:
        """Return the member for ``value`` (a member or its string); raise ``ValueError``."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(repr(t.value) for t in cls)
            raise ValueError(f"unknown type {value!r} (expected one of {known})") from None


BrazeTypeLike = BrazeType | str
