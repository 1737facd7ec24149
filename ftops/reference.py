"""The config reference, generated from the pydantic models of ftops.config so that it
cannot drift from them: `python -m ftops.reference > docs/config.md` (tests/test_docs.py
fails when the file differs from what this prints).

A key's description is its Field description, else the comment beside it in the shipped
deploy/ftops.yaml. The CLI options that set a key are found by the key their help names
("... (data.source)"), a convention tests/test_docs.py holds every override to.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ftops.config import DEFAULT_CONFIG, ENV_NESTING, ENV_PREFIX, Config

REGENERATE = "python -m ftops.reference > docs/config.md"
KEY_IN_HELP = re.compile(r"\((?:config: )?([a-z_]+(?:\.[a-z_]+)+)\)")  # "(data.source)", "(config: project.dir)"
BOUNDS = {annotated_types.Ge: ("ge", ">="), annotated_types.Gt: ("gt", ">"),
          annotated_types.Le: ("le", "<="), annotated_types.Lt: ("lt", "<")}
MANY_COMMANDS = 6  # a flag on more commands than this is summarised, not listed

INTRO = f"""\
# Config reference

<!-- Generated from ftops/config/ by `{REGENERATE}`; do not edit by hand
     (tests/test_docs.py fails when this file differs from what the generator prints). -->

One YAML file per project: `--config` / `-c`, else `$FTOPS_CONFIG`, else
`deploy/ftops.yaml` (the shipped defaults, commented). Every section forbids unknown keys,
so a typo is an error, never a silently ignored setting. Values are applied in this order,
each overriding the one before:

1. the defaults below (the column `deploy/ftops.yaml` shows where the shipped file differs);
2. the YAML file: the keys it sets (a project's own file is not merged with
   `deploy/ftops.yaml`: copy that file to start from the shipped values);
3. environment variables `FTOPS_<SECTION>__<KEY>` (nested: `FTOPS_DATA__AUGMENT__ENABLED`),
   whose values are read as YAML: `FTOPS_DATA__SEED=7`, `FTOPS_DATA__LABELS='[neg, pos]'`,
   `FTOPS_URIS__MLFLOW_TRACKING=postgresql+psycopg://...`. `candidates` is a list and
   is set in the YAML only;
4. CLI flags: the column "flags" names the options that set a key, e.g.
   `ftops gateway up --port 0` sets `serving.gateway_port` for that service's start.

A bad value stops every command with one message naming the key, the value, where it came
from (the file, `$FTOPS_...` or `--flag`) and what is allowed. `ftops config check` validates a
file; `ftops config show` prints the effective config (secrets in URLs masked). Secrets never
go in the YAML: see [security.md](security.md).
"""


# ---------------------------------------------------------------- the models


def sections(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, type[BaseModel], FieldInfo]]:
    """(dotted name, model, the field holding it) of every section, depth first; list items
    are named `name[]`."""
    for name, field in model.model_fields.items():
        sub, many = _section_of(field.annotation)
        if sub is not None:
            dotted = f"{prefix}{name}{'[]' if many else ''}"
            yield dotted, sub, field
            yield from sections(sub, dotted + ".")


def _section_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (itself, optional, or as list items) and whether it is a list."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, typing.get_origin(annotation) is list
    return None, False


def config_keys() -> set[str]:
    """Every dotted key a section holds (`data.augment.enabled`, `candidates[].epochs`)."""
    keys = {name for name, _, _ in sections()}
    for name, model, _ in sections():
        keys.update(f"{name}.{key}" for key in model.model_fields)
    return keys


def type_text(annotation: Any) -> str:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args if a is not type(None)) + " or null"
    if origin is Literal:
        return "str"
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def allowed_text(field: FieldInfo) -> str:
    """Literal choices, numeric bounds and patterns, as the validator enforces them."""
    parts = []
    for arg in (field.annotation, *typing.get_args(field.annotation)):
        if typing.get_origin(arg) is Literal:
            parts.append("one of " + ", ".join(f"`{choice}`" for choice in typing.get_args(arg)))
    for item in field.metadata:
        for kind, (attribute, sign) in BOUNDS.items():
            if isinstance(item, kind):
                parts.append(f"{sign} {_scalar(getattr(item, attribute))}")
        if getattr(item, "pattern", None):
            parts.append(f"matches `{item.pattern}`")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "(required)"
    value = field.default
    if isinstance(value, BaseModel):
        return "its section's defaults"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [item.model_dump(mode="json", exclude_defaults=True) for item in value]
    return f"`{_scalar(value)}`"


def _scalar(value: Any) -> str:
    """The value as one would write it in the YAML."""
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading `name`: lower case, punctuation but - and _ dropped."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def env_text(section: str) -> str:
    if "[]" in section:
        return "Set in the YAML only: an environment variable cannot address a list item."
    return f"Environment: `{ENV_PREFIX}{ENV_NESTING.join(p.upper() for p in section.split('.'))}{ENV_NESTING}<KEY>`."


def shipped_text(field: FieldInfo, dotted: str, shipped: dict[str, Any]) -> str:
    """The value deploy/ftops.yaml sets, where it differs from the default."""
    node: Any = shipped
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    if isinstance(node, dict) or (isinstance(node, list) and node and isinstance(node[0], dict)):
        return ""  # a section or a list of sections: their own rows say it key by key
    default = str(field.default) if isinstance(field.default, Path) else field.default
    return "" if node == default else f"`{_scalar(node)}`"


# ---------------------------------------------------------------- descriptions from the shipped YAML


def yaml_comments(path: Path = DEFAULT_CONFIG) -> dict[str, str]:
    """dotted key -> the comment on the same line in the YAML (round-trip parser: PyYAML
    drops comments)."""
    from ruamel.yaml import YAML

    found: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if not hasattr(node, "ca"):
            return
        for key in node:
            token = (node.ca.items.get(key) or [None, None, None])[2]
            line = token.value.split("\n", 1)[0].strip() if token is not None else ""
            if line.startswith("#"):
                found[prefix + str(key)] = line.lstrip("#").strip()
            if isinstance(node[key], dict):
                walk(node[key], f"{prefix}{key}.")

    walk(YAML().load(path.read_text(encoding="utf-8")), "")
    return found


# ---------------------------------------------------------------- CLI options that set keys


def command_tree(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(words after `ftops`, click command or group) of every registered command and group."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from command_tree(command, (*path, name))


def cli_group() -> Any:
    """The click group typer builds from `ftops.cli.app` (typer ships its own click)."""
    import typer

    from ftops.cli import app

    return typer.main.get_command(app)


def option_flags(command: Any, keys: set[str] | None = None) -> dict[str, str]:
    """{dotted key: flag} for each option of a click command whose help names a config key."""
    keys = config_keys() if keys is None else keys
    flags = {}
    for param in command.params:
        if param.param_type_name == "option":
            for key in KEY_IN_HELP.findall(param.help or ""):
                if key in keys:
                    flags[key] = max(param.opts, key=len)
    return flags


def flags_by_key() -> dict[str, dict[str, list[str]]]:
    """{dotted key: {flag: [command, ...]}} over the whole CLI."""
    keys, found = config_keys(), {}
    for path, command in command_tree(cli_group()):
        for key, flag in option_flags(command, keys).items():
            found.setdefault(key, {}).setdefault(flag, []).append(" ".join(path))
    return found


def flags_text(by_flag: dict[str, list[str]]) -> str:
    parts = []
    for flag, commands in sorted(by_flag.items()):
        where = "most commands" if len(commands) > MANY_COMMANDS else ", ".join(f"`ftops {c}`" for c in commands)
        parts.append(f"`{flag}` ({where})")
    return "; ".join(parts)


# ---------------------------------------------------------------- the page


def section_text(name: str, model: type[BaseModel], holder: FieldInfo, comments: dict[str, str], flags: dict,
                 shipped: dict[str, Any]) -> list[str]:
    lines = ["", f"## `{name}`", ""]
    about = inspect.cleandoc(model.__doc__) if model.__doc__ else comments.get(name.replace("[]", ""), "")
    lines += [about, ""] if about else []
    if isinstance(holder.default, list) and holder.default:
        lines += [f"Without the key, the list is {default_text(holder)}.", ""]
    lines += [env_text(name), "",
              f"| key | type | default | {DEFAULT_CONFIG.parent.name}/{DEFAULT_CONFIG.name} | allowed | flags | description |",
              "|---|---|---|---|---|---|---|"]
    return lines + [key_row(f"{name}.{key}", field, comments, flags, shipped) for key, field in model.model_fields.items()]


def key_row(dotted: str, field: FieldInfo, comments: dict[str, str], flags: dict, shipped: dict[str, Any]) -> str:
    sub, many = _section_of(field.annotation)
    description = field.description or comments.get(dotted.replace("[]", "")) or ""
    if sub is not None:
        section = f"{dotted}{'[]' if many else ''}"
        link = f"[`{section}`](#{anchor(section)})"
        description = f"{description} (see {link})" if description else f"see {link}"
    cells = [f"`{dotted.rsplit('.', 1)[1]}`", type_text(field.annotation), default_text(field),
             shipped_text(field, dotted, shipped), allowed_text(field), flags_text(flags.get(dotted, {})), description]
    return "| " + " | ".join(map(_cell, cells)) + " |"


def _cell(text: str) -> str:
    """A table cell: pipes escaped, and outside code spans a `<` that Markdown would read as
    the start of an HTML tag (`<project dir>`)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(part if i % 2 else re.sub(r"<(?=[A-Za-z/])", "&lt;", part) for i, part in enumerate(parts))


def render() -> str:
    comments, flags = yaml_comments(), flags_by_key()
    shipped = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    lines = [INTRO.rstrip("\n"), "", "Sections: " + ", ".join(f"[`{n}`](#{anchor(n)})" for n, _, _ in sections()) + "."]
    for name, model, holder in sections():
        lines += section_text(name, model, holder, comments, flags, shipped)
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
