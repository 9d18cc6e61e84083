"""The project's one config mechanism: nested dataclasses <-> TOML.

Config classes are plain dataclasses that validate themselves in ``__post_init__``
(raising ValueError that names the field). ``from_dict`` builds them from nested
dicts and refuses unknown keys; ``load`` reads a TOML file and applies ``a.b=value``
overrides; ``to_dict`` / ``dumps`` give the resolved config that every run writes
next to its output and into every checkpoint.
"""

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A config file or override does not fit the config classes."""


def _field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def require_at_least(config, minimum, *names: str, prefix: str = "") -> None:
    """ValueError naming the first field of ``names`` below ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{prefix}{name} must be >= {minimum}, got {value}")


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_type(value, hint, name: str):
    """value as the field type ``hint`` wants it, or ConfigError naming the field.

    bool takes true/false (TOML) or the strings "true"/"false" in any case (so that
    ``--set flip=False`` means false); int takes integral numbers; float takes ints;
    tuples and lists are checked element by element; dict and unannotated types pass.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return check_type(value, option, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: expected {_type_name(hint)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} values, got {value!r}")
            return tuple(check_type(v, a, f"{name}[{i}]")
                         for i, (v, a) in enumerate(zip(value, args, strict=True)))
        inner = args[0] if args else typing.Any
        items = [check_type(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if (hint is dict or origin is dict) and not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from a nested dict; unknown keys and values of the wrong
    type are errors that name the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {data!r}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {sorted(unknown)}; "
                          f"known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = args[0] if origin in (typing.Union, types.UnionType) and len(args) == 1 else hint
        if dataclasses.is_dataclass(inner):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a table, got {value!r}")
            value = from_dict(inner, value, f"{where}{key}.")
        else:
            value = check_type(value, hint, f"{where}{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def to_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, TOML-able


def field_defaults(cls) -> dict:
    """The defaults of a config class's fields as ``to_dict`` writes them, without
    constructing (and so validating) the class itself."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else \
            json.loads(json.dumps(value))
    return out


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as TOML, else strings)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *path, leaf = key.strip().split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a table")
        node[leaf] = _parse_value(value.strip())
    return data


def merge_tables(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``, recursively (sub-tables merged, other values replaced)."""
    out = dict(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = merge_tables(out[k], v) if both else v
    return out


def read_toml(path: Path | str) -> dict:
    """A config file's tables; a missing or malformed file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err


def load(cls, path: Path | str | None = None, overrides: list[str] | None = None):
    data = read_toml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def dumps_table(table: dict) -> str:
    """TOML text of a nested dict (sub-dicts become tables; None values are left out)."""
    def emit(d: dict, prefix: str) -> list[str]:
        lines = [f"{k} = {json.dumps(v)}" for k, v in d.items()
                 if v is not None and not isinstance(v, dict)]  # None: the default
        for k, v in d.items():
            if isinstance(v, dict):
                lines += ["", f"[{prefix}{k}]", *emit(v, f"{prefix}{k}.")]
        return lines
    return "\n".join(emit(table, "")).lstrip() + "\n"


def dumps(config) -> str:
    """TOML text of a resolved config."""
    return dumps_table(to_dict(config))


def with_added_fields(old, new, defaults):
    """``old`` (a resolved config written earlier) with the keys ``new`` has and ``old``
    lacks filled from ``defaults`` (the config classes' defaults): fields added to the
    classes since ``old`` was written, whose default is the behaviour ``old`` ran with.
    A new field set away from its default still differs."""
    if not (isinstance(old, dict) and isinstance(new, dict) and isinstance(defaults, dict)):
        return old
    out = dict(old)
    for key, value in new.items():
        if key not in old:
            if key in defaults:
                out[key] = defaults[key]
        else:
            out[key] = with_added_fields(old[key], value, defaults.get(key))
    return out


def resume_conflicts(saved: dict, config, allowed: frozenset[str] = frozenset()) -> list[str]:
    """``"name: old -> new"`` for each field (dotted name) whose value in a checkpoint's
    config ``saved`` differs from this run's ``config``, except the ``allowed`` ones;
    fields added to the classes since the checkpoint count as their defaults."""
    current = to_dict(config)
    saved = with_added_fields(saved, current, field_defaults(type(config)))
    conflicts = []

    def walk(old: dict, new: dict, prefix: str) -> None:
        for key in sorted(set(old) | set(new), key=str):
            name = prefix + key
            if name in allowed:
                continue
            a, b = old.get(key), new.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                walk(a, b, name + ".")
            elif a != b:
                conflicts.append(f"{name}: {a!r} -> {b!r}")

    walk(saved if isinstance(saved, dict) else {}, current, "")
    return conflicts


def refuse_resume_conflicts(saved: dict, config, allowed: frozenset[str], where) -> None:
    """ConfigError (one line) when the checkpoint in ``where`` was written with settings
    this run changes beyond ``allowed``."""
    conflicts = resume_conflicts(saved, config, allowed)
    if conflicts:
        more = f" (+{len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        raise ConfigError(
            f"{where} was written by a run with other settings: {'; '.join(conflicts[:3])}"
            f"{more}. Only {', '.join(sorted(allowed))} may change when resuming: set the "
            "others back, or use a new --out")
