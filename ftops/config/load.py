"""Reading a config: YAML, then `FTOPS_...` environment overrides, then dotted overrides
(CLI flags), validated into one Config; a relative data.source in a file is anchored to
that file's folder, and an invalid value is reported with where it came from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftops.config.root import Config
from ftops.errors import ConfigError

ENV_PREFIX = "FTOPS_"
ENV_NESTING = "__"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent.parent / "deploy" / "ftops.yaml"


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None, flags: dict[str, str] | None = None) -> Config:
    """Read YAML (default: $FTOPS_CONFIG, else deploy/ftops.yaml), apply `FTOPS_` env
    overrides, then `overrides` (dotted keys, e.g. from CLI flags), and validate.

    `flags` names the option each override came from ({"serving.gateway_port": "--port"}),
    so an error points at what the user typed; an override without one is named as such.
    """
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG
    path = Path(path)
    read = not (path == DEFAULT_CONFIG and not path.exists())
    raw = _read_yaml(path) if read else {}
    if read:
        _anchor_data_source(raw, path.parent)
    sources = _apply_env(raw, env)
    for dotted, value in (overrides or {}).items():
        keys = tuple(dotted.split("."))
        _set(raw, keys, value)
        sources[keys] = (flags or {}).get(dotted) or f"the override {dotted}"
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path, sources, str(path) if read else "the built-in defaults")) from None


SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _anchor_data_source(raw: dict[str, Any], folder: Path) -> None:
    """A relative data.source in a YAML file is read relative to that file (as compose files
    do), so every process that reads the file (the CLI, the deployments process started in
    another folder, a worker) finds the same data. Flags and env values stay relative to the
    working directory of whoever typed them."""
    data = raw.get("data")
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source or SCHEME.match(source):
        return  # builtin:<corpus>, s3://..., file:...: not a path
    if not Path(source).expanduser().is_absolute():
        data["source"] = os.path.normpath(folder.resolve() / source)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Pass --config with a YAML file, "
                          f"or start from {DEFAULT_CONFIG}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"Config file {path} is not valid YAML{where}: {problem}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {exc.start}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must be a mapping of sections (project, data, "
                          f"model, ...), not a {type(data).__name__}.")
    return data


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> dict[tuple[str, ...], str]:
    """FTOPS_DATA__VALIDATION_SIZE=0.2 sets data.validation_size; values are parsed as YAML.

    Returns which keys came from which variable, so errors can name the variable.
    """
    sources: dict[tuple[str, ...], str] = {}
    for var, text in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var == f"{ENV_PREFIX}CONFIG":
            continue
        keys = tuple(part.lower() for part in var[len(ENV_PREFIX):].split(ENV_NESTING))
        if len(keys) < 2 or not all(keys):
            continue  # not a config key (e.g. FTOPS_HOME); leave it to whoever reads it
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _set(raw, keys, value)
        sources[keys] = "$" + var
    return sources


def _set(raw: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _explain(exc: ValidationError, path: Path, sources: dict[tuple[str, ...], str],
             file_origin: str | None = None) -> str:
    """One clause per error: the key, the value, where it came from (a flag, a variable or
    the file; for a rule over a whole section, the file and what overrode keys inside it)
    and what is allowed."""
    lines, file_origin = [], file_origin or str(path)
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        inside = ", ".join(sorted({origin for keys, origin in sources.items() if keys[:len(loc)] == loc}))
        origin = sources.get(loc) or (f"{file_origin} with {inside}" if inside else file_origin)
        where = f" (from {origin})"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(f"unknown key '{key}'{where}; allowed here: {', '.join(allowed)}")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"'{key}'{shown}{where}: {err['msg']}")
    return f"Invalid config {path}: " + "; ".join(lines) + "."


def _allowed_keys(loc: tuple[str, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)
