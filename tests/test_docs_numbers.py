"""Numbers quoted in the documentation are links to the result files they come from, and agree with them.

The convention: a measured number in README.md or docs/**/*.md is written as a markdown link
to the JSON file that holds it, with a JSON pointer (RFC 6901) as the fragment, the path
relative to the markdown file like any link:

    [0.69](results/demo/results.json#/brain_breast_cta/brain/mean)
    [13.1 samples/s](results/bench-cpu/bench.json#/patch/training_samples_per_second)

The link text starts with the number as shown: an optional sign (``-`` or ``−``), digits with
optional thousands separators (``1,440``) and optional decimals. Whatever follows is a unit
and is not checked (``%``, `` s``, `` GiB``, ``×``, ``x``); ``**bold**`` or `` `code` `` around
the text is allowed. The value at the pointer must be a number (not a boolean) that, rounded
to the shown number of decimals, is the shown number (``|shown − value|`` at most half a unit
of the last shown digit). Nothing is scaled: a percentage is quoted as the JSON holds it (a
``_percent`` key holds percent; a fraction quoted as a percentage needs its own key). A link
into a JSON file whose text is not a number (``[the table](results/demo/results.json#/brain_cta)``)
only needs its pointer to resolve. In a pointer, ``~1`` stands for ``/`` and ``~0`` for ``~``
(RFC 6901), and the fragment may be percent-encoded (RFC 6901 §6).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent

LINK = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+\.json#[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
NUMBER = re.compile(r"(?P<sign>[-−+]?)(?P<digits>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<decimals>\d+))?(?![\d,])")


def documentation(root: Path = ROOT) -> list[Path]:
    """README.md and docs/**/*.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def resolve_pointer(document, pointer: str):
    """The value at the JSON pointer ``pointer`` (RFC 6901) of ``document``; KeyError if there is none."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise KeyError(f"{pointer!r} is not a JSON pointer (it starts with /)")
    value = document
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list):
            if not re.fullmatch(r"0|[1-9]\d*", token) or int(token) >= len(value):
                raise KeyError(f"no index {token!r} in a list of {len(value)} at {pointer!r}")
            value = value[int(token)]
        elif isinstance(value, dict):
            if token not in value:
                raise KeyError(f"no key {token!r} at {pointer!r} (there are: {', '.join(map(str, value))})")
            value = value[token]
        else:
            raise KeyError(f"{token!r} of {pointer!r} is inside a {type(value).__name__}, not an object or array")
    return value


def shown_number(text: str) -> tuple[float, int] | None:
    """The number a link text starts with and its decimals; None if it starts with none."""
    text = text.strip().strip("*_`").strip()
    match = NUMBER.match(text)
    if match is None:
        return None
    value = float(match["digits"].replace(",", "") + (f".{match['decimals']}" if match["decimals"] else ""))
    return (-value if match["sign"] in "-−" and match["sign"] else value), len(match["decimals"] or "")


def quote_problem(text: str, target: str, base: Path) -> str | None:
    """Why the link ``[text](target)`` of a markdown file in ``base`` misquotes its JSON value (None: it agrees)."""
    parts = urlsplit(target)
    file = base / unquote(parts.path)
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        return f"{parts.path}: cannot read the JSON ({error})"
    pointer = unquote(parts.fragment)
    try:
        value = resolve_pointer(document, pointer)
    except KeyError as error:
        return f"{parts.path}#{pointer}: {error.args[0]}"
    shown = shown_number(text)
    if shown is None:
        return None  # not a number: a link to the value only
    number, decimals = shown
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"[{text}] quotes {parts.path}#{pointer}, which is not a number but {value!r}"
    if abs(number - value) > 0.5 * 10.0 ** -decimals * (1 + 1e-9) + 1e-12:
        return f"[{text}] does not match {parts.path}#{pointer} = {value!r} (rounded: {value:,.{decimals}f})"
    return None


def quotes(path: Path) -> list[tuple[int, str, str]]:
    """``(line, text, target)`` of every link into a JSON file with a fragment, outside fenced code blocks."""
    found, fence = [], None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3] if fence is None else (None if stripped.startswith(fence) else fence)
            continue
        if fence is None:
            found += [(number, m.group(1), m.group(2)) for m in LINK.finditer(line)]
    return found


def check_markdown(path: Path) -> list[str]:
    """Every misquoted number of ``path``, as ``file:line: problem``."""
    problems = []
    for line, text, target in quotes(path):
        problem = quote_problem(text, target, path.parent)
        if problem:
            problems.append(f"{path.name}:{line}: {problem}")
    return problems


DOC_QUOTES = [(doc, line, text, target) for doc in documentation() for line, text, target in quotes(doc)]


@pytest.mark.parametrize(("doc", "line", "text", "target"), DOC_QUOTES,
                         ids=[f"{d.name}:{n}:{t}" for d, n, t, _ in DOC_QUOTES])
def test_documented_number_matches_its_result_file(doc, line, text, target):
    problem = quote_problem(text, target, doc.parent)
    assert problem is None, f"{doc.relative_to(ROOT)}:{line}: {problem}"


# --- the checks themselves, on a fixture ------------------------------------------------------------


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results" / "demo"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "brain_breast_cta": {"brain": {"mean": 0.6874, "white_matter": 0.8912}, "n_runs": 2, "runs": [{"seed": 0}, {"seed": 1}]},
        "a/b": {"~x": 12.5}, "count": 1440, "seconds": 671.04, "negative": -0.031, "flag": True, "name": "dense",
        "exp. 7": 0.5,
    }))
    return tmp_path


def _problems(root: Path, markdown: str) -> list[str]:
    (root / "doc.md").write_text(markdown)
    return check_markdown(root / "doc.md")


@pytest.mark.parametrize("markdown", [
    "Mean Dice [0.69](results/demo/results.json#/brain_breast_cta/brain/mean).",
    "[0.687](results/demo/results.json#/brain_breast_cta/brain/mean) and [**0.89**](results/demo/results.json#/brain_breast_cta/brain/white_matter)",
    "[1,440](results/demo/results.json#/count) mini-batches in [671 s](results/demo/results.json#/seconds), [671.0 s](results/demo/results.json#/seconds)",
    "[12.5%](results/demo/results.json#/a~1b/~0x) and [−0.03](results/demo/results.json#/negative), [-0.031](results/demo/results.json#/negative)",
    "[seed 1](results/demo/results.json#/brain_breast_cta/runs/1) [2 runs](results/demo/results.json#/brain_breast_cta/n_runs)",
    "[0.5](results/demo/results.json#/exp.%207) and [the whole file](results/demo/results.json#)",
    "```\n[0.12](results/demo/results.json#/count) in a code block is not a quote\n```",
])
def test_numbers_that_agree_with_their_json_pass(results, markdown):
    assert _problems(results, markdown) == []


@pytest.mark.parametrize(("markdown", "why"), [
    ("[0.70](results/demo/results.json#/brain_breast_cta/brain/mean)", "does not match"),  # 0.6874 → 0.69
    ("[0.6](results/demo/results.json#/brain_breast_cta/brain/mean)", "does not match"),
    ("[1,441](results/demo/results.json#/count)", "does not match"),
    ("[0.69](results/demo/results.json#/brain_breast_cta/breast/mean)", "no key 'breast'"),
    ("[0.69](results/demo/results.json#/brain_breast_cta/runs/2)", "no index '2'"),
    ("[0.69](results/demo/results.json#/brain_breast_cta/runs/01)", "no index '01'"),
    ("[1](results/demo/results.json#/flag)", "not a number"),
    ("[1](results/demo/results.json#/name)", "not a number"),
    ("[0.69](results/demo/missing.json#/x)", "cannot read"),
    ("[0.69](results/demo/results.json#brain)", "not a JSON pointer"),
])
def test_a_wrong_number_or_a_missing_key_fails(results, markdown, why):
    (problem,) = _problems(results, markdown)
    assert why in problem and problem.startswith("doc.md:1: ")


def test_the_pointer_resolver_follows_rfc_6901():
    document = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, " ": 7}
    assert resolve_pointer(document, "") is document
    assert resolve_pointer(document, "/foo") == ["bar", "baz"]
    assert resolve_pointer(document, "/foo/0") == "bar"
    assert resolve_pointer(document, "/") == 0
    assert resolve_pointer(document, "/a~1b") == 1
    assert resolve_pointer(document, "/m~0n") == 8
    assert resolve_pointer(document, "/ ") == 7
    with pytest.raises(KeyError):
        resolve_pointer(document, "/foo/-")
    with pytest.raises(KeyError):
        resolve_pointer(document, "/foo/0/x")
