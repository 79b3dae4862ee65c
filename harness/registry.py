"""Registries of named strategies: losses, target selections, context modifications.

An entry is a function plus a pydantic model of its keyword-only parameters, built from the
function's own signature (`beta: UnitInterval = 0.5`), so the suite validator checks a value's
parameters with the same types, ranges and defaults the function runs with, and the caches key on
the effective settings. One rule for duplicate names and one "unknown X (known: ...)" message.

Imports only pydantic and the standard library: `harness validate` reads every registry without
paying for torch (see `lazy_import`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "Entry",
    "Field",
    "Integer",
    "NonNegative",
    "NonNegativeInt",
    "Number",
    "Positive",
    "PositiveInt",
    "Probability",
    "Registry",
    "RegistryError",
    "UnitInterval",
    "error_detail",
    "lazy_import",
    "nested",
    "one_line",
]


def _not_bool(v: Any) -> Any:
    """YAML reads `yes`/`true` as a bool, which pydantic would quietly take as 1."""
    if isinstance(v, bool):
        raise PydanticCustomError("number_type", "Input should be a number, not a boolean")
    return v


# Parameter types shared by the registries and the suite spec. Floats also accept numeric text
# (PyYAML reads `1e-4` without a dot as a string) but never `.inf` or `.nan`; integers must be YAML integers.
Number = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
Integer = Annotated[int, Strict()]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]
UnitInterval = Annotated[Number, Field(ge=0, le=1)]
Probability = Annotated[Number, Field(gt=0, le=1)]
PositiveInt = Annotated[Integer, Field(ge=1)]
NonNegativeInt = Annotated[Integer, Field(ge=0)]


class RegistryError(ValueError):
    """An unknown name or bad parameters, as one line naming the entry and the parameter."""


@dataclass(frozen=True)
class Entry:
    """A registered function and the model of its keyword-only parameters; subclasses add metadata."""

    name: str
    fn: Callable[..., Any]
    model: type[BaseModel]
    # Rules across parameters that a signature cannot state (e.g. two parts of a loss must agree): given the
    # effective parameters, raise ValueError with a message; `validate` reports it on the value itself.
    check: Callable[[dict[str, Any]], None] | None = None

    @property
    def params(self) -> tuple[str, ...]:
        """Parameter names, in signature order."""
        return tuple(self.model.model_fields)

    def defaults(self) -> dict[str, Any]:
        """Each optional parameter's value when left out, validated as a given one (a nested value normalised)."""
        return {
            k: TypeAdapter(Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation).validate_python(  # type: ignore[arg-type]
                f.default
            )
            for k, f in self.model.model_fields.items()
            if not f.is_required()
        }


E = TypeVar("E", bound=Entry)


def _annotation(fn: Callable[..., Any], p: inspect.Parameter) -> Any:
    """The parameter's annotation, evaluated in the function's module (modules use postponed annotations)."""
    ann = p.annotation
    if ann is inspect.Parameter.empty:
        raise TypeError(f"{fn.__qualname__}: parameter '{p.name}' needs a type annotation")
    if isinstance(ann, str):  # what typing.get_type_hints does, for this one parameter only
        ann = eval(ann, fn.__globals__)  # the module's own annotation text
    return ann


def params_model(fn: Callable[..., Any], title: str) -> type[BaseModel]:
    """A pydantic model of `fn`'s keyword-only parameters: their annotations, constraints and defaults."""
    fields: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (_annotation(fn, p), default)
    return create_model(title, __config__=ConfigDict(extra="forbid", frozen=True, validate_default=True), **fields)


def error_detail(kind: str, loc: tuple[str | int, ...], msg: str, value: Any) -> InitErrorDetails:
    """One error for `ValidationError.from_exception_data`: raised in a validator, it lands at `loc`
    below the value being validated, with `msg` as it is."""
    return {"type": PydanticCustomError(kind, "{msg}", {"msg": msg}), "loc": loc, "input": value}


def one_line(e: ValidationError) -> str:
    """Every error of `e` as `field: message`, joined on one line."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(value)'}: {err['msg'].removeprefix('Value error, ')}"
        for err in e.errors()
    )


class Registry(Mapping[str, E], Generic[E]):
    """Name → entry. `register` is the decorator each strategy module exposes."""

    def __init__(self, kind: str, entry: type[E]) -> None:
        self.kind = kind  # "loss", "target strategy", ...: the word every message uses
        self._entry = entry
        self._entries: dict[str, E] = {}

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __delitem__(self, name: str) -> None:
        """Tests register throwaway entries and remove them again."""
        del self._entries[name]

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: add `fn` under `name`; its keyword-only parameters become the entry's parameters."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            model = params_model(fn, f"{self.kind} '{name}'")
            self._entries[name] = self._entry(name=name, fn=fn, model=model, **meta)
            return fn

        return decorator

    def unknown(self, name: object) -> str:
        return f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self._entries))})"

    def lookup(self, name: str) -> E:
        """The entry, or a RegistryError listing the known names."""
        if name not in self._entries:
            raise RegistryError(self.unknown(name))
        return self._entries[name]

    def validate(self, name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Effective parameters (defaults filled in); a pydantic ValidationError whose locations are
        `name` or the parameter, so the suite spec reports them under the axis value's own path."""
        if name not in self._entries:
            raise ValidationError.from_exception_data(
                self.kind, [error_detail("unknown_name", ("name",), self.unknown(name), name)]
            )
        entry = self._entries[name]
        try:
            effective = entry.model.model_validate(dict(params or {})).model_dump()
        except ValidationError as e:
            known = f"known: {', '.join(entry.params)}" if entry.params else f"'{name}' takes none"
            errors = [
                error_detail(
                    "unknown_parameter" if err["type"] == "extra_forbidden" else err["type"],
                    err["loc"],
                    f"unknown parameter ({known})"
                    if err["type"] == "extra_forbidden"
                    else err["msg"].removeprefix("Value error, "),
                    err["input"],
                )
                for err in e.errors()
            ]
            raise ValidationError.from_exception_data(self.kind, errors) from None
        if entry.check is not None:
            try:
                entry.check(effective)
            except ValueError as e:
                raise ValidationError.from_exception_data(
                    self.kind, [error_detail("value_error", (), str(e), dict(params or {}))]
                ) from None
        return effective

    def resolve(self, name: str, params: Mapping[str, Any] | None) -> tuple[E, dict[str, Any]]:
        """The entry and its effective parameters, or one RegistryError line (for code, not suites)."""
        entry = self.lookup(name)
        try:
            return entry, self.validate(name, params)
        except ValidationError as e:
            raise RegistryError(f"{self.kind} '{name}': {one_line(e)}") from None


def nested(registry: Registry[E], refuse: Callable[[E], str | None] | None = None) -> Any:
    """The type of a parameter whose value is another value of `registry` (a loss inside `mix`, a target in a
    schedule): a name or `{name, params...}`, validated by that registry and normalised to
    `{"name": ..., **effective params}`, so caches, duplicates and labels see the effective settings.
    `refuse(entry)` says why that entry cannot sit here, or None; errors land under the parameter's path."""

    def check(value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
            raise ValueError(f"give a {registry.kind} name or a mapping with `name` and its parameters")
        params = {k: v for k, v in value.items() if k != "name"}
        name = value["name"]
        effective = registry.validate(name, params)
        why = refuse(registry[name]) if refuse is not None else None
        if why:
            raise ValueError(why)
        return {"name": name, **effective}

    return Annotated[dict[str, Any], BeforeValidator(check)]


class _LazyModule(ModuleType):
    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # later look-ups no longer come through here
        return getattr(module, attr)


def lazy_import(name: str) -> ModuleType:
    """A module imported on first attribute access.

    The strategy modules declare their entries at import time but need torch only when a function runs;
    `harness validate` imports them to check a suite, and must answer in well under a second.
    """
    return _LazyModule(name)
