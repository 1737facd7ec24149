"""The docs stay true to the code: the config reference is what the generator prints, every
`ftops ...` command a hint or a page names exists, a config error names the real source of
a value, and `ftops gateway loadtest` takes its load settings from the config. No servers
but one in-process HTTP stand-in for the gateway's /predict."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftops import reference
from ftops.cli import app, root
from ftops.config import load_config
from ftops.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BACKTICKED = re.compile(r"`(ftops(?: [^`\n]*)?)`")
FENCED_LINE = re.compile(r"^\s*(?:\$\s+)?(?:[A-Z][A-Z0-9_]*=\S+\s+)*(ftops(?:\s[^#\n]*)?)")  # `FOO=1 ftops up`


# ---------------------------------------------------------------- the generated config reference


def test_config_reference_is_what_the_generator_prints():
    page = ROOT / "docs" / "config.md"
    assert page.is_file() and page.read_text(encoding="utf-8") == reference.render(), (
        "docs/config.md differs from what ftops/config.py (models, descriptions), deploy/ftops.yaml (comments, "
        f"values) and the CLI's option help give now. Regenerate it: `{reference.REGENERATE}`")


def test_generator_runs_as_a_module_and_lists_every_key_with_its_rules():
    done = subprocess.run([sys.executable, "-m", "ftops.reference"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    page = done.stdout
    for name, model, _ in reference.sections():
        body = page.split(f"\n## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        for key in model.model_fields:
            assert f"\n| `{key}` |" in body, f"{name}.{key} is missing from its section"
    rows = {line.split(" | ")[0]: line for line in page.splitlines() if line.startswith("| `")}
    assert "> 0, < 0.5" in rows["| `validation_size`"]
    assert "one of `error`, `drop`" in rows["| `on_invalid`"]
    assert "`--port` (`ftops gateway up`)" in rows["| `gateway_port`"]
    assert "`FTOPS_SERVING__<KEY>`" in page and "`FTOPS_DATA__AUGMENT__<KEY>`" in page
    assert "EDA-style augmentation" in page  # a section docstring


def test_links_between_the_docs_resolve():
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for page in [ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        for target in link.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.M)
                if fragment not in {reference.anchor(h.replace("`", "")) for h in headings}:
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# ---------------------------------------------------------------- every `ftops ...` named exists


def doc_files() -> list[Path]:
    return sorted([*ROOT.glob("ftops/**/*.py"), *ROOT.glob("flows/**/*.py"), ROOT / "README.md",
                   *ROOT.glob("docs/*.md"), ROOT / "infra" / "README.md"])


def mentions(path: Path) -> list[tuple[int, str]]:
    """(line, command) of every backticked `ftops ...`, and in Markdown of every command line
    of a fenced block."""
    text = path.read_text(encoding="utf-8")
    found = [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BACKTICKED.finditer(text)]
    if path.suffix == ".md":
        fenced = False
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced and (match := FENCED_LINE.match(line)):
                found.append((number, match.group(1).rstrip(" \\")))
    return found


def problems(command_line: str, group=None) -> list[str]:
    """What does not exist in a command line: its words must name commands (or groups; `a/b`
    and `a / b` are alternatives), its options must be options of that command. Arguments,
    placeholders (<...>, {...}) and `...` end the check."""
    group = group or reference.cli_group()
    words = re.sub(r"\s+/\s+", "/", command_line.strip()).split()[1:]
    return _walk(words, group, ())


def _walk(words: list[str], command, path: tuple[str, ...]) -> list[str]:
    if words and not words[0].startswith("-") and hasattr(command, "commands"):
        if re.search(r"[<{.]", words[0]):
            return []
        found = []
        alternatives = words[0].split("/")
        for word in alternatives:
            sub = command.commands.get(word)
            if sub is None:
                found.append(f"`ftops {' '.join((*path, word))}` is no command (`ftops {' '.join(path)}` has: "
                             f"{', '.join(sorted(command.commands))})")
            else:
                found += _walk(words[1:] if len(alternatives) == 1 else [], sub, (*path, word))
        return found
    options = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    flags = [flag for word in words if word.startswith("-") and word != "-"
             for flag in _alternatives(word.split("=", 1)[0])]
    return [f"`ftops {' '.join(path)}` has no option {flag} (it has: {', '.join(sorted(options))})"
            for flag in flags if flag not in options]


def _alternatives(option: str) -> list[str]:
    """`--keep/--reset` names two options; `-c/path` is one option and its value."""
    parts = option.split("/")
    return parts if all(p.startswith("-") for p in parts) else [parts[0]]


def test_the_command_check_catches_what_it_should():
    assert problems("ftops deploy --model v3") and problems("ftops nope") and problems("ftops monitor chek")
    assert not problems("ftops serve up/down/status") and not problems("ftops monitor check / history / ui")
    assert not problems("ftops demo -c deploy/demo.yaml --keep") and not problems("ftops monitor ui")
    assert not problems("ftops deploy --export <its export folder> --version {version}")
    assert not problems("ftops data prepare --augment/--no-augment --help")
    assert not problems("ftops deploy --export /srv/p/exports/v1-<time> --version 1")
    assert problems("ftops deploy --export=/srv/p --modle 3")


def test_every_ftops_command_in_hints_and_docs_exists():
    group = reference.cli_group()
    wrong = [f"{path.relative_to(ROOT)}:{line}: `{command}`: {problem}"
             for path in doc_files() for line, command in mentions(path) for problem in problems(command, group)]
    assert not wrong, "hints or docs name commands / options that do not exist:\n" + "\n".join(wrong)


# ---------------------------------------------------------------- config errors name the flag


def overrides_by_command() -> dict[str, dict[str, str]]:
    """{command function: {dotted key: the parameter whose value it gets}} from the dict
    literals in the command functions of ftops/cli/ (what they hand `config_of`)."""
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in sorted((ROOT / "ftops" / "cli").glob("*.py"))]
    keys, found = reference.config_keys(), {}
    for func in (n for tree in trees for n in tree.body if isinstance(n, ast.FunctionDef)):
        params = {a.arg for a in func.args.args}
        for node in ast.walk(func):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value in keys:
                    names = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} & params
                    found.setdefault(func.name, {}).update({key.value: name for name in names})
        if "project_dir" in params:
            found.setdefault(func.name, {})["project.dir"] = "project_dir"
    return found


def test_every_cli_override_is_named_by_the_flag_that_sets_it():
    commands = {cmd.callback.__name__: cmd for _, cmd in reference.command_tree(reference.cli_group())
                if getattr(cmd, "callback", None)}
    by_command = overrides_by_command()
    assert {"serving.gateway_port", "serving.traffic"} <= set(by_command["gateway_up"])
    for function, overrides in by_command.items():
        if function not in commands:
            continue  # a helper, not a command
        for dotted, param_name in overrides.items():
            option = next(p for p in commands[function].params if p.name == param_name)
            assert root._flag(dotted) in option.opts, \
                f"{function}: {dotted} comes from {option.opts}, but errors would name {root._flag(dotted)}"
            assert dotted in reference.option_flags(commands[function]), \
                f"{function}: the help of {option.opts[0]} should name ({dotted}) (docs/config.md reads it)"


def run_cli(args: list[str]):
    return CliRunner().invoke(app, args, terminal_width=250)


def test_a_bad_flag_value_names_the_flag(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("project: {name: docs-test}\n")
    project = ["-c", str(config), "--project-dir", str(tmp_path / "p")]
    for args, key, flag in [(["gateway", "up", "--port", "70000"], "serving.gateway_port", "--port"),
                            (["monitor", "ui", "up", "--port", "0"], "monitoring.ui_port", "--port"),
                            (["data", "prepare", "--max-rows", "5"], "data.max_rows", "--max-rows")]:
        result = run_cli([*args, *project])
        assert isinstance(result.exception, ConfigError), result.output
        assert f"'{key}'" in str(result.exception) and f"(from {flag})" in str(result.exception)
    assert not (tmp_path / "p" / "gateway").exists()  # nothing started


def test_a_rule_over_a_section_names_the_file_and_the_flags(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("data: {validation_size: 0.3}\n")
    result = run_cli(["data", "prepare", "--test-size", "0.35", "-c", str(config), "--project-dir", str(tmp_path)])
    assert isinstance(result.exception, ConfigError)
    assert f"(from {config} with --test-size)" in str(result.exception)


def test_a_bad_env_var_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("FTOPS_CONFIG", raising=False)
    monkeypatch.setenv("FTOPS_SERVING__GATEWAY_PORT", "99999")
    result = run_cli(["gateway", "up", "--project-dir", str(tmp_path)])
    assert isinstance(result.exception, ConfigError)
    assert "'serving.gateway_port' = 99999 (from $FTOPS_SERVING__GATEWAY_PORT)" in str(result.exception)


def test_a_bad_yaml_key_names_the_file(tmp_path):
    config = tmp_path / "team.yaml"
    config.write_text("serving:\n  gateway_port: 99999\n  gateway_prot: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config, env={})
    message = str(caught.value)
    assert f"'serving.gateway_port' = 99999 (from {config})" in message
    assert f"unknown key 'serving.gateway_prot' (from {config})" in message


def test_an_override_without_a_flag_is_named_as_one():
    with pytest.raises(ConfigError, match=r"\(from the override data\.max_rows\)"):
        load_config(None, env={}, overrides={"data.max_rows": 3})


# ---------------------------------------------------------------- the gateway load test reads the config


class _Predict(BaseHTTPRequestHandler):
    """Answers /predict as the gateway does (what the load test reads of it) and counts."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(self.path)
        body = json.dumps({"request_id": uuid.uuid4().hex, "route": "champion", "predictions": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Predict)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def load_row(output: str) -> list[str]:
    row = next(line for line in output.splitlines() if line.startswith("│"))
    return [cell.strip() for cell in row.strip("│").split("│")]


def test_gateway_loadtest_takes_requests_concurrency_and_warmup_from_the_config(tmp_path, gateway_url):
    config = tmp_path / "p.yaml"
    config.write_text("serving: {load_requests: 12, load_concurrency: 3, load_warmup: 2}\n")
    base = ["gateway", "loadtest", "--url", gateway_url, "-c", str(config), "--project-dir", str(tmp_path)]
    _Predict.seen = []
    result = run_cli(base)
    assert result.exit_code == 0, result.output
    assert load_row(result.output)[:2] == ["12", "3"] and len(_Predict.seen) == 12 + 2
    _Predict.seen = []
    result = run_cli([*base, "--requests", "10", "--concurrency", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert load_row(result.output)[:2] == ["10", "2"] and _Predict.seen == ["/predict"] * 10
