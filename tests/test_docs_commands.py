"""Every command the documentation shows is one mtseg accepts, and every file it names exists.

Collected from the fenced code blocks (```` ``` ```` or ``~~~``) of README.md and docs/**/*.md
(docs/results/ excluded: generated): each line, joined over ``\\`` continuations, with a
leading ``$ ``, environment assignments (``WANDB_MODE=online``), ``timeout DURATION``,
``nohup`` and ``time`` removed, that starts with ``python -m mtseg.X`` (``python3``,
``.venv/bin/python``) or ``make``; comments (``# ...``), redirections and ``| tee ...`` are
ignored. Checked without training:

- ``mtseg.train`` and ``mtseg.evaluate``: Hydra composes ``conf/train.yaml`` /
  ``conf/evaluate.yaml`` with the overrides (a multirun's comma sweeps: their first value);
- any other ``mtseg.X``: the module has an argparse parser (captured from ``main``) that parses
  the arguments, or, when the line elides some (``...``, ``[optional parts]``), that knows
  every ``--flag``; Hydra overrides given to ``mtseg.bench`` / ``mtseg.gpu_check`` compose;
- ``make T ...``: T is a target of the Makefile; where T's recipe runs ``python -m mtseg.X``,
  that command, with the line's variables (``ARGS="..."``, ``EXPERIMENT=...``) substituted, is
  checked as above;
- every path a command names whose first part is a file or folder of the repository
  (``conf/``, ``mtseg/``, ``docs/``, ...) exists, and so does every relative link target of the
  markdown (``[text](path)``, ``[ref]: path``; a ``#fragment`` such as a JSON pointer is left
  to tests/test_docs_numbers.py).

Placeholders in angle brackets (``<run>``, ``<date_time>``), shell variables (``$COMMON``) and
``...`` stand for what the reader supplies: an override holding one is not composed, a
positional is parsed as given, a path holding one is not checked.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Stands for one ``<...>`` placeholder of the documentation.
PLACEHOLDER = "\N{MATHEMATICAL LEFT ANGLE BRACKET}placeholder\N{MATHEMATICAL RIGHT ANGLE BRACKET}"
#: Modules whose command line is Hydra's, and their config.
HYDRA_MODULES = {"mtseg.train": "train", "mtseg.evaluate": "evaluate"}
#: What the Hydra overrides of an argparse command are composed on top of (mtseg.bench's dense section
#: composes ``training=cubes`` with all of them; its patch section the others without ``training.*``).
OVERRIDES_BASE = {"mtseg.bench": ["training=cubes"]}
#: Hydra's own flags: name -> takes a value.
HYDRA_FLAGS = {"-m": False, "--multirun": False, "-c": True, "--cfg": True, "-p": True, "--package": True,
               "--resolve": False, "--info": False, "-i": False, "-h": False, "--help": False, "--hydra-help": False,
               "-cn": True, "--config-name": True, "-cp": True, "--config-path": True, "-cd": True, "--config-dir": True,
               "-r": False, "--run": False}


def documentation(root: Path = ROOT) -> list[Path]:
    """README.md and docs/**/*.md, generated results (docs/results/) excluded."""
    docs = sorted(p for p in (root / "docs").rglob("*.md") if "results" not in p.relative_to(root / "docs").parts[:1])
    return [p for p in [root / "README.md", *docs] if p.is_file()]


@dataclass
class Command:
    path: Path
    line: int
    text: str
    variables: dict[str, str] | None = None  # shell variables set by earlier lines of the file (COMMON="...")

    @property
    def expanded(self) -> str:
        """The text with ``$NAME`` / ``${NAME}`` of :attr:`variables` substituted (others stay placeholders)."""
        variables = self.variables or {}
        return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), m.group(0)), self.text)

    def __str__(self) -> str:
        return f"{self.path.name}:{self.line}: {self.text}"


def fenced_lines(text: str):
    """``(line number, line)`` of every line inside a fenced code block."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith(("```", "~~~")):
                fence = stripped[:3]
        elif stripped.startswith(fence):
            fence = None
        else:
            yield number, line


COMMAND_START = re.compile(r"^(?:\$\s+)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:(?:timeout\s+\S+|nohup|time|/usr/bin/time(?:\s+-v)?)\s+)*"
                           r"(?:\S*/)?(?:python3?\s+-m\s+mtseg\.|make(?:\s|$))")


def commands(path: Path) -> list[Command]:
    """The mtseg and make command lines in ``path``'s fenced code blocks."""
    found, pending, start, variables = [], "", 0, {}
    for number, line in fenced_lines(path.read_text()):
        if not pending:
            start = number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        assignment = re.fullmatch(r"\s*(?:export\s+)?([A-Za-z_]\w*)=(\S.*)", pending)
        if COMMAND_START.match(pending.strip()):
            found.append(Command(path, start, pending.strip(), dict(variables)))
        elif assignment:  # COMMON="+preset=cpu_demo logger=none": used by later commands as $COMMON
            with contextlib.suppress(ValueError):
                variables[assignment.group(1)] = " ".join(shlex.split(assignment.group(2), comments=True))
        pending = ""
    return found


def tokens(text: str) -> tuple[list[list[str]], bool]:
    """The shell words of each simple command of ``text`` (split at ``&&``, ``;``, ``|``), and whether the text elides
    arguments (``...`` or ``[optional parts]``)."""
    text = re.sub(r"<[^<>]*>", PLACEHOLDER, text)  # <the runs of the first three commands>: one word
    elided = "..." in text
    optional = re.compile(r"(?<!\S)\[([^\[\]]*\s[^\[\]]*)\](?!\S)")  # [more runs or sweeps], [--out DIR]
    elided |= bool(optional.search(text))
    text = optional.sub(r"\1", text)
    text = re.sub(r"(?<!\S)\d?>>?&?\s*\S+", "", text)  # redirections: > log, 2>&1
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments: list[list[str]] = [[]]
    for word in lexer:
        if word and set(word) <= set(";&|"):
            segments.append([])
        else:
            segments[-1].append(word)
    segments = [[w for w in segment if w != "..."] for segment in segments]
    return [s for s in segments if s], elided


def strip_prefix(words: list[str]) -> list[str]:
    """``words`` without a leading ``$``, environment assignments and ``timeout``/``nohup``/``time``."""
    words = list(words)
    while words:
        if words[0] == "$" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] in ("nohup", "time", "/usr/bin/time"):
            words = words[1:]
            if words and words[0] == "-v":
                words = words[1:]
        elif words[0] == "timeout" and len(words) > 1:
            words = words[2:]
        else:
            return words
    return words


def is_placeholder(word: str) -> bool:
    return PLACEHOLDER in word or "$" in word


@functools.cache
def makefile(root: Path = ROOT) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The Makefile's targets with their recipe lines, and its simple variable assignments."""
    targets: dict[str, list[str]] = {}
    variables: dict[str, str] = {}
    current = None
    for line in (root / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current is not None:
            targets[current].append(line.strip().lstrip("@-"))
            continue
        current = None
        assignment = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(\?=|:=|=)\s*(.*)$", line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(3).strip()
            continue
        rule = re.match(r"^([A-Za-z0-9_.%/$()-]+(?:\s+[A-Za-z0-9_.%/$()-]+)*)\s*:(?!=)", line)
        if rule:
            for name in rule.group(1).split():
                targets.setdefault(name, [])
            current = rule.group(1).split()[0]
    return targets, variables


def make_variable(name: str, given: dict[str, str], variables: dict[str, str]) -> str:
    if name in given:
        return given[name]
    if name == "EXPERIMENTS":  # $(shell ... mtseg.tasks ...)
        from mtseg.tasks import EXPERIMENTS

        return ",".join(EXPERIMENTS)
    value = variables.get(name)
    if value is None or "$(shell" in value or "$(" in value and not re.fullmatch(r"\$\(\w+\)(/\w+)*", value):
        return PLACEHOLDER
    return re.sub(r"\$\((\w+)\)", lambda m: make_variable(m.group(1), given, variables), value)


def check_make(words: list[str], elided: bool) -> list[str]:
    """Problems of ``make [VAR=value ...] TARGET ...``: unknown targets; the recipe's mtseg command, expanded."""
    targets, variables = makefile()
    given = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
    names = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
    problems = [f"make: no target {name!r} in the Makefile" for name in names if name not in targets]
    for name in names:
        for recipe in targets.get(name, []):
            if "-m mtseg." not in recipe:
                continue
            expanded = re.sub(r"\$\((\w+)\)", lambda m: make_variable(m.group(1), given, variables), recipe)
            for segment in tokens(expanded)[0]:
                segment = strip_prefix(segment)
                if len(segment) > 2 and segment[1] == "-m" and segment[2].startswith("mtseg."):
                    problems += [f"make {name} runs `{shlex.join(segment)}`: {p}" for p in check_python(segment[2], segment[3:], elided)]
    return problems


class _Parser(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@functools.cache
def module_parser(module: str) -> argparse.ArgumentParser | None:
    """The argparse parser of ``python -m module`` (captured when its ``main`` parses), None without one."""
    imported = importlib.import_module(module)
    main = getattr(imported, "main", None)
    if main is None and hasattr(imported, "__path__"):  # a package: its __main__
        main = getattr(importlib.import_module(f"{module}.__main__"), "main", None)
    if main is None:
        return None

    def capture(self, args=None, namespace=None):
        raise _Parser(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        main([])
    except _Parser as captured:
        return captured.parser
    except (Exception, SystemExit):  # noqa: BLE001 - a main that does not parse first
        return None
    finally:
        argparse.ArgumentParser.parse_args = original
    return None


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The subcommand's parser where ``words`` names one (``mtseg.data check ...``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word in words:
                if word in action.choices:
                    return action.choices[word]
    return parser


def compose_problems(config: str, overrides: list[str], multirun: bool) -> list[str]:
    """Whether Hydra composes ``config`` with ``overrides`` (placeholders left out, sweeps: first value)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mtseg import CONFIG_DIR
    from mtseg.training.experiment_configs import register_experiment_configs

    register_experiment_configs()
    kept = []
    parser = OverridesParser.create()
    for override in overrides:
        if is_placeholder(override):
            continue
        try:
            parsed = parser.parse_override(override)
        except Exception as error:  # noqa: BLE001 - Hydra's OverrideParseException
            return [f"Hydra cannot parse {override!r}: {error}"]
        if multirun and parsed.is_sweep_override():
            override = f"{parsed.get_key_element()}={next(iter(parsed.sweep_string_iterator()))}"
        kept.append(override)
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            compose(config, overrides=kept, return_hydra_config=True)
    except Exception as error:  # noqa: BLE001 - any composition error is the finding
        return [f"Hydra does not compose {config}.yaml with {kept}: {type(error).__name__}: {error}"]
    return []


def check_hydra(module: str, arguments: list[str]) -> list[str]:
    config, multirun, overrides = HYDRA_MODULES[module], False, []
    words = iter(arguments)
    for word in words:
        flag, _, value = word.partition("=")
        if flag in HYDRA_FLAGS:
            multirun |= flag in ("-m", "--multirun")
            if HYDRA_FLAGS[flag] and not value:
                value = next(words, "")
            if flag in ("-cn", "--config-name"):
                config = value
        elif word.startswith("-"):
            return [f"{word!r} is not a Hydra flag"]
        else:
            overrides.append(word)
    return compose_problems(config, overrides, multirun)


def check_argparse(module: str, arguments: list[str], elided: bool) -> list[str]:
    parser = module_parser(module)
    if parser is None:
        return [f"{module} has no argparse command line"]
    if elided:  # only the flags: the line leaves some arguments to the reader
        parser = _subparser(parser, arguments)
        known = {option for action in parser._actions for option in action.option_strings}
        return [f"{module} has no option {flag}" for flag in (a.split("=", 1)[0] for a in arguments if a.startswith("--")) if flag not in known]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = parser.parse_args(arguments)
    except SystemExit as exit_:
        if exit_.code:
            return [f"{module} rejects its arguments: {errors.getvalue().strip().splitlines()[-1]}"]
        return []  # --help
    overrides = getattr(parsed, "overrides", None)
    return compose_problems("train", [*OVERRIDES_BASE.get(module, []), *overrides], multirun=False) if overrides else []


def check_python(module: str, arguments: list[str], elided: bool) -> list[str]:
    if module in HYDRA_MODULES:
        return check_hydra(module, arguments)
    relative = Path(*module.split("."))
    if not ((ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative / "__main__.py").is_file()):
        return [f"no module {module} (python -m {module} needs {relative}.py or {relative}/__main__.py)"]
    return check_argparse(module, arguments, elided)


@functools.cache
def repository_entries(root: Path = ROOT) -> frozenset[str]:
    """The first parts of the repository's paths (tracked files and folders; docs/ besides)."""
    entries = {"conf", "mtseg", "tests", "notebooks", "docs", "Makefile", "README.md", "pyproject.toml", "constraints.txt"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True, timeout=30).stdout
        entries |= {line.split("/", 1)[0] for line in listed.splitlines() if line}
    return frozenset(entries)


def path_problems(words: list[str], root: Path = ROOT) -> list[str]:
    """Paths in ``words`` (or after an ``=``) under a file or folder of the repository that do not exist."""
    problems = []
    for word in words:
        for candidate in {word, word.split("=", 1)[-1]}:
            parts = Path(candidate).parts
            if not parts or is_placeholder(candidate) or any(c in candidate for c in "*?,[]{}"):
                continue
            if parts[0] in repository_entries(root) and (len(parts) > 1 or "/" in candidate or "." in candidate):
                if not (root / candidate).exists():
                    problems.append(f"{candidate} does not exist")
    return problems


def check_command(command: Command) -> list[str]:
    """Every problem of one documented command line (empty: it is valid)."""
    try:
        segments, elided = tokens(command.expanded)
    except ValueError as error:  # shlex: an open quote
        return [f"not a shell command: {error}"]
    problems = []
    for words in segments:
        words = strip_prefix(words)
        if not words:
            continue
        if Path(words[0]).name in ("python", "python3") and len(words) > 2 and words[1] == "-m" and words[2].startswith("mtseg."):
            problems += check_python(words[2], words[3:], elided)
            problems += path_problems(words[3:])
        elif words[0] == "make":
            problems += check_make(words, elided)
            problems += path_problems([w.split("=", 1)[1] if "=" in w else w for w in words[1:]] +
                                      [x for w in words[1:] if w.startswith("ARGS=") for x in shlex.split(w[5:])])
    return problems


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[(?!\^)[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")


def links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every markdown link of ``path`` outside code (inline and reference links)."""
    inside = {number for number, _ in fenced_lines(path.read_text())}
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number in inside or line.strip().startswith(("```", "~~~")):
            continue
        line = re.sub(r"`[^`]*`", "", line)  # inline code
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            found.append((number, reference.group(1)))
    return found


def link_problem(path: Path, target: str, root: Path = ROOT) -> str | None:
    """Why the link ``target`` of ``path`` is broken; None for an existing file (or an external or in-page link)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path:  # http(s), mailto; #anchor in the same file
        return None
    file = (path.parent / unquote(parts.path)).resolve()
    if not file.exists():
        return f"{target}: {file.relative_to(root) if file.is_relative_to(root) else file} does not exist"
    return None


DOC_COMMANDS = [c for doc in documentation() for c in commands(doc)]
DOC_LINKS = [(doc, line, target) for doc in documentation() for line, target in links(doc)]


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=[f"{c.path.name}:{c.line}" for c in DOC_COMMANDS])
def test_documented_command_is_valid(command):
    problems = check_command(command)
    assert not problems, f"{command.path.relative_to(ROOT)}:{command.line}: `{command.text}`\n" + "\n".join(problems)


@pytest.mark.parametrize(("doc", "line", "target"), DOC_LINKS, ids=[f"{d.name}:{n}:{t}" for d, n, t in DOC_LINKS])
def test_documented_link_exists(doc, line, target):
    problem = link_problem(doc, target)
    assert problem is None, f"{doc.relative_to(ROOT)}:{line}: {problem}"


# --- the checks themselves, on a small fixture --------------------------------------------------

FIXTURE = """# Title

See [the config](conf/train.yaml), [a missing file](docs/nothing.md#section), [the web](https://example.org)
and [a number](docs/results/x.json#/a/b) (`[not a link](nowhere.md)` in code).

```bash
$ python -m mtseg.train +experiment=brain schedule.minibatches_per_task=10   # a comment
.venv/bin/python -m mtseg.train -m +experiment=brain,breast_cta seed=0,1 \\
    data.brain.shape=[48,48,48]
python -m mtseg.train +experiment=brian
python -m mtseg.train schedule.no_such_knob=3
python -m mtseg.evaluate ckpt_path=<run>/checkpoints/last.ckpt output_dir=results/x
WANDB_MODE=disabled timeout 2h python -m mtseg.figures outputs/sweeps/<date_time> [more runs] --out figures/
python -m mtseg.figures runs --no-such-flag
python -m mtseg.predict ... --task breast --probabilities dir/
python -m mtseg.predict ... --colour red
python -m mtseg.bench --refills 1 model.depth=3
python -m mtseg.bench --refills one
python -m mtseg.data check data/nnunet_raw/X --task brain
python -m mtseg.nosuchmodule --x
make demo ARGS="seed=1"
make sweep ARGS="seed=0,1"
make nosuchtarget
make train EXPERIMENT=breast_cta ARGS="schedule.no_such_knob=1"
make gpu-check ARGS="--compile model.depth=3"
python -m mtseg.train +experiment=brain hydra.run.dir=x --cfg job
python -m mtseg.train +experiment=brain --config-name nosuchconfig
python -m mtseg.bench --out docs/nosuchfolder/bench
COMMON="schedule.minibatches_per_task=10 logger=none"   # a shell variable
python -m mtseg.train +experiment=brain $COMMON
BAD="schedule.no_such_knob=1"
python -m mtseg.train +experiment=brain $BAD $UNSET
```

```
some other code
```
"""


@pytest.fixture
def fixture_doc(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text(FIXTURE)
    return path


def test_commands_are_collected_from_fenced_blocks_with_continuations(fixture_doc):
    found = commands(fixture_doc)
    assert len(found) == 23 and found[0].line == 7
    assert found[21].expanded == "python -m mtseg.train +experiment=brain schedule.minibatches_per_task=10 logger=none"
    assert found[1].text.endswith("seed=0,1      data.brain.shape=[48,48,48]") and found[2].line == 10


def test_valid_and_invalid_commands_are_told_apart(fixture_doc):
    verdicts = {c.line: check_command(c) for c in commands(fixture_doc)}
    valid = [7, 8, 12, 13, 15, 17, 19, 21, 22, 25, 26, 30]
    assert {line: verdicts[line] for line in valid} == {line: [] for line in valid}
    expected = {10: "brian", 11: "no_such_knob", 14: "--no-such-flag", 16: "no option --colour", 18: "invalid int value",
                20: "no module mtseg.nosuchmodule", 23: "no target 'nosuchtarget'", 24: "no_such_knob",
                27: "nosuchconfig", 28: "docs/nosuchfolder/bench does not exist", 32: "no_such_knob"}
    for line, fragment in expected.items():
        assert verdicts[line] and fragment in "\n".join(verdicts[line]), (line, verdicts[line])


def test_relative_links_must_exist_fragments_aside(fixture_doc, tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yaml").write_text("")
    found = links(fixture_doc)
    assert [t for _, t in found] == ["conf/train.yaml", "docs/nothing.md#section", "https://example.org", "docs/results/x.json#/a/b"]
    problems = {t: link_problem(fixture_doc, t, tmp_path) for _, t in found}
    assert problems["conf/train.yaml"] is None and problems["https://example.org"] is None
    assert "docs/nothing.md does not exist" in problems["docs/nothing.md#section"]
    assert "docs/results/x.json does not exist" in problems["docs/results/x.json#/a/b"]
