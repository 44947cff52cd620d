"""Number-bearing prose is glued, cited, or explicitly allowed (issue 31).

A number that a chapter's prose states should be glued from code that ran ({glue}), read from a
recorded JSON the chapter loads (and then glued), or cited to its source. This test scans the prose
of book/NN_*.md (outside code cells, math, inline code, roles and links) for bare numbers and fails
on any that is not accounted for.

What a test cannot tell apart: a bare number may be a setting the code uses ("5-word shingles"), a
definition ("a uint16 holds 65,536 values"), a fact from a source cited in the sentence before, or
a measurement typed in by hand, which is the thing to forbid. Only a reader can judge that. So:

- a line (the book writes one sentence per line) that carries a {cite} role or a link counts as
  cited, and its numbers pass;
- headings, list markers, section references (2.4, §3.4, chapter 7), years and names that contain
  digits (GPT-2, H100, bf16, Llama 3) are not claims and are skipped;
- every other bare number must be listed, per chapter and with how many times it may appear, in
  tests/prose_numbers_allowed.txt, with the reason it needs no glue. A new bare number, or one
  more occurrence of a listed one, fails the test until it is glued, cited, or listed with a
  reason. The entries present when the test was written are marked as grandfathered there.
- an allowance larger than the number's uses is stale (the number was glued, cited or cut since)
  and fails too, so the list never permits more than the chapter says.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = ROOT / "tests" / "prose_numbers_allowed.txt"
CHAPTERS = sorted(ROOT.glob("book/[0-9]*.md"))

_REMOVE = [re.compile(p) for p in (
    r"\{glue(?::text|:)?\}`[^`]*`",                      # glued values
    r"\{\w+(?::\w+)?\}`[^`]*`",                          # other roles: numref, doc, ref, eq
    r"``[^`]*``", r"`[^`]*`",                            # inline code
    r"\$[^$]*\$",                                        # inline math
    r"https?://\S+", r"<[^>]+>",
)]
_REFERENCES = re.compile(
    r"\b(?:[Cc]hapters?|[Ss]ections?|[Ee]xercises?|[Ff]igures?|[Tt]ables?|Appendix|§)\s*"
    r"\d+(?:\.\d+)*(?:\s*(?:[–-]|and|to|,)\s*\d+(?:\.\d+)*)*|§\s*\d+(?:\.\d+)*(?:[–-]\d+(?:\.\d+)*)?")
_YEARS = re.compile(r"\b(?:19|20)\d\d\b")
_NAMES = re.compile(r"[\w.-]*[A-Za-z][\w.-]*\d[\w.-]*|\b\d+[\w-]*[A-Za-z][\w-]*")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?%?")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the prose: no front matter, code cells, math blocks or directives."""
    lines = text.splitlines()
    start = 0
    if lines and lines[0].strip() == "---":
        start = next(i for i in range(1, len(lines)) if lines[i].strip() == "---") + 1
    out, in_code, in_math = [], False, False
    for n in range(start, len(lines)):
        s = lines[n].strip()
        if s.startswith("$$"):
            in_math = in_math != (s.count("$$") == 1)
            continue
        if re.match(r"^(`{3,}|~{3,})", s):
            in_code = not in_code
            continue
        if in_code or in_math or s.startswith(("#", ":::", "(")) or re.match(r"^:\w+:", s):
            continue
        out.append((n + 1, lines[n]))
    return out


def bare_numbers(line: str) -> list[str]:
    """The numbers a prose line states that are neither glued, cited, nor a name or reference."""
    if "{cite" in line or re.search(r"\]\(https?://", line):
        return []
    s = re.sub(r"^\s*(?:\d+\.|[-*])\s+", " ", line)  # list markers
    for pattern in (*_REMOVE, _REFERENCES, _YEARS, _NAMES):
        s = pattern.sub(" ", s)
    return [m.group().rstrip(",") for m in _NUMBER.finditer(s)]


def found_in(lines: list[str]) -> list[str]:
    """Every bare number of the given prose lines, in order."""
    return [n for line in lines for n in bare_numbers(line)]


def found(path: Path) -> Counter:
    return Counter(found_in([line for _, line in prose_lines(path.read_text(encoding="utf-8"))]))


def allowed() -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for raw in ALLOWED.read_text(encoding="utf-8").splitlines():
        entry = raw.split("#", 1)[0].split()
        if len(entry) == 3:
            table.setdefault(entry[0], Counter())[entry[1]] += int(entry[2])
    return table


def unaccounted(found_here: Counter, allowed_here: Counter) -> Counter:
    """Numbers used more often than allowed: {number: uses beyond the allowance}."""
    return found_here - allowed_here


def stale(name: str, found_here: Counter, allowed_here: Counter) -> list[str]:
    """One message per allowance larger than the number's uses, naming file, number and counts."""
    return [f"{name} {number}: allowed {allowed_here[number]}, used {found_here[number]}"
            for number in sorted(allowed_here) if allowed_here[number] > found_here[number]]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_bare_number_in_prose_is_glued_cited_or_allowed(path: Path):
    extra = unaccounted(found(path), allowed().get(path.name, Counter()))
    where = [f"line {n}: {line.strip()[:90]}" for n, line in prose_lines(path.read_text())
             if set(bare_numbers(line)) & set(extra)]
    assert not extra, (
        f"{path.name} states numbers in prose that are not glued, cited or allowed: "
        f"{dict(extra)}. Glue them from code that ran, cite their source in the sentence, or "
        f"list them in {ALLOWED.name} with the reason they need neither.\n" + "\n".join(where[:12]))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_allowance_is_larger_than_the_uses(path: Path):
    old = stale(path.name, found(path), allowed().get(path.name, Counter()))
    assert not old, (
        f"stale entries in {ALLOWED.name} (a number glued, cited or removed since): lower each "
        f"count to the uses, or drop the entry:\n" + "\n".join(old))


def test_every_allowance_names_a_chapter():
    names = {p.name for p in CHAPTERS}
    assert not set(allowed()) - names, f"{ALLOWED.name} lists files that are not chapters: " \
        f"{sorted(set(allowed()) - names)}"


def test_a_doctored_allowance_is_reported_stale_and_a_short_one_unaccounted():
    uses = Counter(found_in(["It runs 300 steps, then 300 more, at width 64."]))
    assert uses == Counter({"300": 2, "64": 1})
    too_many = Counter({"300": 3, "64": 1, "7": 1})
    assert stale("99_x.md", uses, too_many) == [
        "99_x.md 300: allowed 3, used 2", "99_x.md 7: allowed 1, used 0"]
    assert not unaccounted(uses, too_many)
    too_few = Counter({"300": 1, "64": 1})
    assert stale("99_x.md", uses, too_few) == []
    assert unaccounted(uses, too_few) == Counter({"300": 1})
    exact = Counter({"300": 2, "64": 1})
    assert stale("99_x.md", uses, exact) == [] and not unaccounted(uses, exact)


def test_the_scanner_catches_a_new_bare_number_and_spares_glue_cites_and_names():
    assert bare_numbers("The model reaches 1.62 nats after 300 steps.") == ["1.62", "300"]
    assert bare_numbers("It reaches {glue:text}`val:.2f` nats.") == []
    assert bare_numbers("GPT-3 used 13-grams {cite:p}`brown2020gpt3`, 10 documents.") == []
    assert bare_numbers("An H100 in bf16 runs GPT-2, as chapter 7 and §3.4 show.") == []
    assert bare_numbers("`encode` costs $O(n^2)$ in 2024, see `x = 36`.") == []
    assert bare_numbers("1. **Bands.** Write it.") == []
