"""Reading settings: each `Config` field's type and checks, the TOML config file, unknown names.

Every field of `web.config.Config` is a setting, picked up here with no list
to keep: its annotation says how text becomes a value and its field
metadata adds the checks (`setting(...)` builds such a field):

- ``int``: a whole number, at least 0 unless the field says otherwise
  (``minimum``/``maximum``); ``float`` likewise;
- ``Bytes`` (``Annotated[int, BYTES]``): a byte count, plain or with a unit
  (``512MiB``, ``512M``, ``1 GB``; see `parse_bytes`);
- ``bool``: true/false, 1/0, yes/no, on/off (any case), nothing else;
- ``str``, ``Path``: as given; ``choices`` lists the allowed strings;
- ``X | None``: an empty value means unset (None);
- ``validate``: a function that raises ValueError with a message for a bad value;
- ``repr=False`` (or ``secret=True``): a secret, never echoed in an error,
  and taken from a config file only if the file is not readable by group or others.

Everything that goes wrong raises `ConfigError` with one line naming the
setting and where it came from (variable, file and line, option).
"""

from __future__ import annotations

import difflib
import re
import stat
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

ENV_PREFIX = "CARGOHOLD_"
CONFIG_ENV = "CARGOHOLD_CONFIG"

BYTES = "bytes"  # the Annotated marker of a byte count
Bytes = Annotated[int, BYTES]

# Field metadata keys (use `setting(...)` rather than writing them by hand).
CHOICES, MINIMUM, MAXIMUM, VALIDATE, SECRET = "choices", "minimum", "maximum", "validate", "secret"

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_BOOL_WORDS = "true or false, 1 or 0, yes or no, on or off"
# Units of byte counts. K, M, G, T are binary (as `--split 3900M` and systemd read them); KB, MB, GB, TB
# are decimal (SI), so a disk vendor's "500 GB" means what it says.
_UNITS = {"": 1, "b": 1,
          "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming it and where it came from."""


def setting(default: T, *, choices: Iterable[str] | None = None, minimum: float | object | None = MISSING,
            maximum: float | None = None, validate: Callable[[Any], object] | None = None,
            secret: bool = False) -> T:
    """A `Config` field with its checks: ``port: int = setting(5000, minimum=1, maximum=65535)``.

    `minimum` defaults to 0 for numbers (pass None for no bound); `validate`
    raises ValueError for a bad value; a `secret` is left out of repr too.
    """
    metadata: dict[str, Any] = {}
    if choices is not None:
        metadata[CHOICES] = tuple(choices)
    if minimum is not MISSING:
        metadata[MINIMUM] = minimum
    if maximum is not None:
        metadata[MAXIMUM] = maximum
    if validate is not None:
        metadata[VALIDATE] = validate
    if secret:
        metadata[SECRET] = True
    result: T = field(default=default, repr=not secret, metadata=metadata)
    return result


@dataclass(frozen=True)
class Spec:
    """How one setting is read and checked."""

    name: str
    kind: str  # "int", "float", "bytes", "bool", "str", "path"
    optional: bool
    secret: bool
    choices: tuple[str, ...] | None
    minimum: float | None
    maximum: float | None
    validate: Callable[[Any], object] | None

    @property
    def variable(self) -> str:
        return f"{ENV_PREFIX}{self.name.upper()}"

    @property
    def option(self) -> str:
        return f"--{self.name.replace('_', '-')}"

    def expected(self) -> str:
        """What a value must look like, for messages."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        return {"int": "a whole number", "float": "a number", "bool": _BOOL_WORDS,
                "bytes": "a byte count (e.g. 4194304, 512MiB, 1GiB, 2TB)", "str": "a string",
                "path": "a path"}[self.kind]

    def from_text(self, text: str) -> Any:
        """The value of an environment variable's `text`; ValueError (message without the name) if invalid."""
        if self.optional and text == "":
            return None
        if self.kind == "str":
            return self.check(text)
        if self.kind == "path":
            if not text:
                raise ValueError("empty: expected a path")
            return self.check(Path(text))
        if self.kind == "bool":
            word = text.strip().lower()
            if word in _TRUE:
                return self.check(True)
            if word in _FALSE:
                return self.check(False)
            raise ValueError(f"not a boolean (use {_BOOL_WORDS})")
        if self.kind == "bytes":
            return self.check(parse_bytes(text))
        try:
            number: float = int(text.strip()) if self.kind == "int" else float(text.strip())
        except ValueError:
            raise ValueError(f"not {self.expected()}") from None
        return self.check(number)

    def from_toml(self, value: Any, base: Path) -> Any:
        """The value of a TOML `value` (relative paths taken from `base`); ValueError if invalid."""
        if isinstance(value, str):
            if self.kind == "path" and value:
                path = Path(value)
                return self.check(path if path.is_absolute() else base / path)
            return self.from_text(value)  # a number or boolean written as a string counts if it parses
        if self.kind == "bool" and isinstance(value, bool):
            return self.check(value)
        if self.kind in ("int", "bytes") and isinstance(value, int) and not isinstance(value, bool):
            return self.check(value)
        if self.kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            return self.check(float(value))
        raise ValueError(f"a TOML {_toml_type(value)}, expected {self.expected()}")

    def check(self, value: Any) -> Any:
        """`value` if it passes the field's checks; ValueError otherwise."""
        if value is None and self.optional:
            return None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"not one of {', '.join(self.choices)}")
        if self.kind in ("int", "float", "bytes"):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"must be at least {_number(self.minimum)}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"must be at most {_number(self.maximum)}")
        if self.validate is not None:
            self.validate(value)
        return value

    def shown(self, value: object) -> str:
        """`value` as an error message may show it: never a secret's."""
        return "(hidden)" if self.secret else repr(value)


def _number(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


def _toml_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"),
                       (dict, "table")):
        if isinstance(value, kind):
            return name
    return "date or time"


def parse_bytes(text: str) -> int:
    """Bytes from ``4194304``, ``512MiB``, ``512M``, ``512 mb``; ValueError for anything else.

    K, M, G, T (and KiB, MiB, GiB, TiB) are powers of 1024; KB, MB, GB, TB powers of 1000.
    """
    m = _SIZE.fullmatch(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError("not a byte count (a number of bytes, optionally with a unit: K, M, G, T or KiB, MiB, "
                         "GiB, TiB are binary; KB, MB, GB, TB decimal)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def specs(cls: type) -> dict[str, Spec]:
    """Every field of the dataclass `cls` as a setting; TypeError for a field type nothing here reads."""
    hints = typing.get_type_hints(cls, include_extras=True)
    result = {}
    for f in fields(cls):
        result[f.name] = _spec(f, hints[f.name])
    return result


def _spec(f: Field[Any], hint: Any) -> Spec:
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            optional, hint = True, rest[0]
    kind = None
    if typing.get_origin(hint) is Annotated and typing.get_args(hint)[0] is int and BYTES in hint.__metadata__:
        kind = "bytes"
    elif typing.get_origin(hint) is typing.Literal:
        return _make(f, "str", optional, tuple(typing.get_args(hint)))
    else:
        kind = {int: "int", float: "float", bool: "bool", str: "str", Path: "path"}.get(hint)
    if kind is None:
        raise TypeError(f"Config.{f.name}: no reader for type {hint!r}: use int, float, Bytes, bool, str, Path, "
                        "or one of them | None")
    return _make(f, kind, optional, f.metadata.get(CHOICES))


def _make(f: Field[Any], kind: str, optional: bool, choices: tuple[str, ...] | None) -> Spec:
    default_minimum = 0 if kind in ("int", "float", "bytes") else None
    return Spec(f.name, kind, optional, bool(f.metadata.get(SECRET)) or not f.repr, choices,
                f.metadata.get(MINIMUM, default_minimum), f.metadata.get(MAXIMUM), f.metadata.get(VALIDATE))


def _did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    """A near-miss spelling among `known`, compared without the `prefix` they share (it would make all look alike)."""
    candidates = {k.removeprefix(prefix): k for k in known if k.startswith(prefix)}
    close = difflib.get_close_matches(name.removeprefix(prefix), sorted(candidates), n=1, cutoff=0.7)
    return f" (did you mean {candidates[close[0]]}?)" if close else ""


def check_environment(environ: Mapping[str, str], settings: Mapping[str, Spec], others: Iterable[str]) -> None:
    """Refuse a CARGOHOLD_* variable that is neither a setting nor one of `others` (a typo must not go unnoticed)."""
    known = {s.variable for s in settings.values()} | set(others)
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise ConfigError("; ".join(f"unknown environment variable {name}{_did_you_mean(name, known, ENV_PREFIX)}"
                                    for name in unknown) + ": cargohold reads no such setting (README, Configuration)")


def from_environment(environ: Mapping[str, str], settings: Mapping[str, Spec]) -> dict[str, Any]:
    """The settings `environ` sets, checked."""
    values = {}
    for spec in settings.values():
        raw = environ.get(spec.variable)
        if raw is None:
            continue
        try:
            values[spec.name] = spec.from_text(raw)
        except ValueError as exc:
            raise ConfigError(f"{spec.variable}={spec.shown(raw)}: {exc}") from None
    return values


def from_options(overrides: Mapping[str, Any], settings: Mapping[str, Spec]) -> dict[str, Any]:
    """Values given in code or on the command line (already typed), checked."""
    values = {}
    for name, value in overrides.items():
        spec = settings.get(name)
        if spec is None:
            raise TypeError(f"Config has no setting {name!r}")
        if value is None:
            continue
        try:
            values[name] = spec.check(value)
        except ValueError as exc:
            raise ConfigError(f"{spec.option} {spec.shown(value)}: {exc}") from None
    return values


def read_file(path: Path, settings: Mapping[str, Spec]) -> dict[str, Any]:
    """The settings of the TOML config file at `path`, checked; ConfigError naming the file (and line)."""
    where = str(path.absolute())
    try:
        st = path.stat()
        with path.open("rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"config file {where}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file {where} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        # Anyone could turn on unsigned bundles, or point the appliance elsewhere.
        raise ConfigError(f"config file {where} is writable by anyone (mode {mode:04o}): chmod o-w {where}")
    try:
        text = data.decode()
        table = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {where} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {where} is not valid TOML: {exc}") from None
    base = path.parent.resolve()
    values: dict[str, Any] = {}
    for key, value in table.items():
        at = f"{where}, line {n}" if (n := _line_of(text, key)) else where
        spec = settings.get(key)
        if spec is None:
            variable_like = key.removeprefix(ENV_PREFIX).lower()
            hint = f" (did you mean {variable_like}?)" if variable_like in settings else _did_you_mean(key, settings)
            raise ConfigError(f"{at}: unknown setting {key!r}{hint}: cargohold reads no such setting "
                              "(README, Configuration)")
        if spec.secret and value != "" and mode & (stat.S_IRGRP | stat.S_IROTH):
            raise ConfigError(f"{at}: {key} is a secret, but {where} is readable by group or others (mode "
                              f"{mode:04o}): chmod 600 {where}, or set {spec.variable} in the environment instead")
        try:
            values[key] = spec.from_toml(value, base)
        except ValueError as exc:
            if isinstance(value, str | int | float | bool):
                raise ConfigError(f"{at}: {key} = {spec.shown(value)}: {exc}") from None
            raise ConfigError(f"{at}: {key}: {exc}") from None
    return values


def _line_of(text: str, key: str) -> int | None:
    """The line (1-based) where top-level `key` is set, if it can be found."""
    name = rf"""(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')"""
    assignment, table = re.compile(rf"\s*{name}\s*="), re.compile(rf"\s*\[\[?\s*{name}\s*[].]")
    top_level = True
    for number, line in enumerate(text.splitlines(), 1):
        if table.match(line):
            return number
        top_level = top_level and not line.lstrip().startswith("[")  # past a table header: not top-level keys
        if top_level and assignment.match(line):
            return number
    return None


def config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read: `explicit` (--config), else $CARGOHOLD_CONFIG; None for none."""
    if explicit is not None:
        return explicit
    named = environ.get(CONFIG_ENV, "")
    return Path(named) if named else None


def resolve(settings: Mapping[str, Spec], environ: Mapping[str, str], others: Iterable[str],
            file: Path | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults < `file` < `environ` < `overrides`: the values to set, every one checked."""
    check_environment(environ, settings, others)
    values = read_file(file, settings) if file is not None else {}
    values.update(from_environment(environ, settings))
    values.update(from_options(overrides, settings))
    return values
