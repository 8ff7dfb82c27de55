"""The config machinery: a YAML file plus `key=value` overrides, validated by pydantic.

Unknown keys and wrong types are errors that name the key and where it came from. Fields marked
`cosmetic` (worker counts, device) change how a stage runs, not what it computes, so they stay
out of the cache key (`semantic`). Tagged unions (SSL methods, adapters) are built from registries.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medalign.errors import ConfigError


def cosmetic(default: Any, description: str = "") -> Any:
    return Field(default, description=description, json_schema_extra={"cosmetic": True})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def tagged_union(registry) -> Any:
    """A pydantic union of every config class in `registry`, told apart by their `name` field."""
    return Annotated[Union[tuple(registry.values())], Field(discriminator="name")]


# -- loading -----------------------------------------------------------------------------------

def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b=value` sets a nested key (value parsed as YAML); `~a.b` deletes one, as in torchtune."""
    for item in overrides:
        if item.startswith("~"):
            *parents, leaf = item[1:].split(".")
            node = _descend(raw, parents, item)
            if leaf not in node:
                raise ConfigError(f"override {item}: no key '{item[1:]}' to delete")
            del node[leaf]
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        *parents, leaf = key.split(".")
        _descend(raw, parents, item)[leaf] = yaml.safe_load(value) if value else None
    return raw


def _descend(raw: dict, parents: list[str], item: str) -> dict:
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item}: '{part}' holds a value, not a section")
        node = child
    return node


def validate(cls: type[Section], raw: dict, source: str, overrides: list[str] = ()) -> Section:
    """Builds `cls` from raw; every problem is reported in one line naming the key and its source."""
    _fill_union_tags(cls, raw)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        override_keys = {o.lstrip("~").partition("=")[0] for o in overrides}
        problems = []
        for err in e.errors():
            key = _dotted(err["loc"], raw) or cls.__name__
            origin = "command line" if any(key == k or key.startswith(k + ".") for k in override_keys) else source
            problems.append(f"{key}: {_explain(err, cls, raw)} (in {origin})")
        raise ConfigError("config error: " + "; ".join(problems)) from None


def load(cls: type[Section], path: str | Path | None, overrides: list[str] = ()) -> Section:
    raw = read_yaml(path) if path else {}
    apply_overrides(raw, list(overrides))
    return validate(cls, raw, str(path) if path else "defaults", overrides)


def _fill_union_tags(cls: type[BaseModel], raw: dict) -> None:
    """`method.temperature=0.2` alone keeps the default method: fill in the tag the user left out."""
    for name, field in cls.model_fields.items():
        value, ann = raw.get(name), field.annotation
        if not isinstance(value, dict):
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _fill_union_tags(ann, value)
        elif isinstance(field.default, BaseModel) and "name" in type(field.default).model_fields:
            value.setdefault("name", field.default.name)


def _dotted(loc: tuple, raw: Any) -> str:
    """pydantic puts the union tag (e.g. 'dino') into error locations; users never typed it."""
    parts, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("name") == part:
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def _explain(err: dict, cls: type[Section], raw: dict) -> str:
    if err["type"] == "extra_forbidden":
        known = _known_keys(cls, err["loc"][:-1], raw)
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        return "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
    if err["type"] == "missing":
        return "required but not set"
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):
        # a check across keys (a model validator): its message names them; the whole section would be noise
        return err["msg"].removeprefix("Value error, ")
    return f"{err['msg']}, got {err.get('input')!r}"


def _known_keys(cls: type[Section], loc: tuple, raw: dict) -> list[str]:
    model: Any = cls
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part in fields:
            model = fields[part].annotation
        # a tagged union: follow the member whose tag matches
        for member in getattr(model, "__args__", ()):
            for m in getattr(member, "__args__", (member,)):
                if getattr(m, "model_fields", {}).get("name") and m.model_fields["name"].default == part:
                    model = m
    return list(getattr(model, "model_fields", {}))


# -- what goes into cache keys -----------------------------------------------------------------

def semantic(cfg: BaseModel) -> dict:
    """The config as JSON-able data, cosmetic fields left out."""
    out = {}
    for name, field in type(cfg).model_fields.items():
        if (field.json_schema_extra or {}).get("cosmetic"):
            continue
        value = getattr(cfg, name)
        out[name] = semantic(value) if isinstance(value, BaseModel) else _jsonable(value)
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested sections -> dotted keys (`optim.lr`); lists and empty sections as JSON text."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


def digest(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys), as DVC hashes its stage entries."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):  # configs inside lists (estimate's candidates)
        return semantic(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def dump(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe(cls: type[BaseModel], prefix: str = "", tag: str = "") -> list[str]:
    """One line per leaf key with its default, for `--help`; union members are tagged by name."""
    lines = []
    for name, field in cls.model_fields.items():
        key, ann = prefix + name, field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += describe(ann, key + ".", tag)
            continue
        members = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if members and getattr(ann, "__origin__", None) is list:  # a list of sections: one line, its doc says
            members = []
        if members:
            tags = [m.model_fields["name"].default for m in members]
            lines.append(f"  {key}.name  (default {field.default.name!r})  one of {', '.join(tags)}")
            for member, t in zip(members, tags):
                lines += [line for line in describe(member, key + ".", t) if not line.startswith(f"  {key}.name ")]
            continue
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        only = f", {tag} only" if tag else ""
        doc = f"  {field.description}" if field.description else ""
        lines.append(f"  {key}  ({default}{only}){doc}")
    return lines
