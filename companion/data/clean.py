"""Cleaning steps for crawled pages, each a small function, and the pipeline that chains them.
Introduced in chapter 2.

Order (loosely modelled on FineWeb's): HTML to text, repair and normalize, language, quality rules,
toxicity,
exact and near-duplicate removal, then PII masking on what is left.
"""
from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser

from .crawl import BLOCKLIST
from .langid import identify, load_profiles
from .dedup import _check_docs, exact_dedup, near_dedup

__all__ = ["STEPS", "STOPWORDS", "GopherConfig", "PipelineResult", "html_to_text", "fix_mojibake",
           "normalize_text", "language_scores", "detect_language", "english_margin",
           "quality_reason", "find_pii", "mask_pii", "toxicity_score", "clean_corpus"]

STEPS = ("extract", "language", "quality", "toxicity", "exact_dedup", "near_dedup", "pii")

# ---- HTML to text -------------------------------------------------------------------------------
# Elements that hold code or page furniture, never the article: dropped with everything inside.
_SKIP_TAGS = {"head", "script", "style", "noscript", "template", "svg", "nav", "header", "footer",
              "aside", "form",
              "button", "iframe"}
# A class or id names furniture when one of its parts (split at spaces, "-", "_", ".") *ends* with
# one of these words: "cookie-banner" and "sphinxsidebar" do, the id "module-http.cookiejar" of a
# real documentation page does not (a substring match dropped that whole page).
_BOILERPLATE = re.compile(r"(?:cookie|consent|banner|menu|sidebar|footer|navbar|advert|popup|share)"
                          r"(?![^\s._-])", re.I)
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "article",
               "main", "section",
               "blockquote", "pre", "table", "tr", "td", "th", "dd", "dt", "figcaption", "hr"}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "source", "wbr", "area", "base", "col",
              "embed"}


class _Extractor(HTMLParser):
    """Collects visible text, dropping skipped subtrees; block tags become paragraph breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # &amp; -> &, &#8217; -> ’
        self.parts: list[str] = []
        self.skip: list[list] = []  # [tag, depth] of the boilerplate element we are inside
        self.pre = 0  # depth of <pre> elements: code, whose line breaks are part of the text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip:
            if tag == self.skip[-1][0] and tag not in _VOID_TAGS:
                self.skip[-1][1] += 1  # nested element of the same name: wait for its end tag too
            return
        marks = " ".join(v or "" for k, v in attrs if k in ("class", "id", "role"))
        if tag in _SKIP_TAGS or (marks and _BOILERPLATE.search(marks)):
            if tag not in _VOID_TAGS:
                self.skip.append([tag, 1])
        elif tag == "li":
            self.parts.append("\n\n• ")  # keep the bullet: Gopher's list rule counts them
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
            self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if tag == self.skip[-1][0]:
                self.skip[-1][1] -= 1
                if self.skip[-1][1] == 0:
                    self.skip.pop()
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data: str) -> None:
        if not self.skip:
            # Inside <pre>, a newline is a line of code: mark it so that the whitespace collapsing
            # below, meant for the source's line wrapping, leaves it.
            self.parts.append(data.replace("\n", _LINE) if self.pre else data)


_LINE = "\x00"  # a line break inside <pre>; a page has no use for U+0000 (&#0; becomes U+FFFD)


def html_to_text(html: str) -> str:
    """Visible main text of a page, one paragraph per block, separated by blank lines; the lines
    of a <pre> block (code) stay lines, with their spaces collapsed.

    Example: html_to_text("<nav>Home</nav><p>To be,</p><p>or not.</p>") -> "To be,\\n\\nor not."
    """
    if not isinstance(html, str):
        raise TypeError(f"html must be a str, got {type(html).__name__}")
    parser = _Extractor()
    parser.feed(html)
    parser.close()
    blocks = ("\n".join(ln for ln in (" ".join(ln.split()) for ln in b.split(_LINE)) if ln)
              for b in "".join(parser.parts).split("\n\n"))
    return "\n\n".join(b for b in blocks if b and b != "•")


# ---- Repair and normalize ----------------------------------------------------------------------
# A UTF-8 multi-byte sequence shown as Windows-1252: a lead byte (C2-F4 -> Â..ô) then continuation
# bytes (80-BF), which cp1252 shows as € ‚ ƒ „ … † ‡ ˆ ‰ Š ‹ Œ Ž ‘ ’ “ ” • – — ˜ ™ š › œ ž Ÿ
# or U+00A0-U+00BF.
_CONT = ("\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
         "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122")
_MOJIBAKE_RUN = re.compile(f"[\u00c2-\u00f4][{_CONT}]+")


def _repair(m: re.Match) -> str:
    run = m.group()
    # "Sloppy" cp1252: the five bytes cp1252 leaves undefined (81 8D 8F 90 9D) pass through as
    # U+0081 etc.
    raw = b"".join(bytes([ord(c)]) if "\u0080" <= c <= "\u009f" else c.encode("cp1252")
                   for c in run)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return run  # not a valid UTF-8 sequence after all: leave it alone


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 read as Windows-1252, one run at a time.

    Example: fix_mojibake("O\u00e2\u20ac\u2122er") -> "O’er".
    """
    return _MOJIBAKE_RUN.sub(_repair, text)


def normalize_text(text: str) -> str:
    """Repair mojibake, NFC-normalize, drop control characters, collapse spaces within each line,
    keep line breaks and blank-line paragraphs.

    Example: normalize_text("Cafe\\u0301  au\\u00a0lait\\n\\n\\n\\nok") -> "Café au lait\\n\\nok"
    """
    text = unicodedata.normalize("NFC", fix_mojibake(text))
    text = "".join(c if c in "\n\t" or unicodedata.category(c)[0] != "C" else " " for c in text)
    # split() also eats \u00a0 and friends; a single line break (a line of code) stays
    paras = ("\n".join(ln for ln in (" ".join(ln.split()) for ln in p.split("\n")) if ln)
             for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paras if p)


# ---- Language ----------------------------------------------------------------------------------
STOPWORDS = {  # the most frequent function words per language; rare in the others
    "en": set("the and to of a i you my that in is not it with me be your his this but he have for "
              "as so will "
              "what thou thy thee him her we our are do no shall by all".split()),
    "fr": set("le la les de des du un une et est dans pour que qui sur pas plus avec nous vous il "
              "elle ce "
              "cette sont mais comme au aux".split()),
    "de": set("der die das und ist nicht ein eine zu den mit von sich auch auf dem wir sie es im "
              "für aber "
              "nach wie noch".split()),
    "es": set("el la los las de del y que en un una es por para con no se su al lo como pero más "
              "muy".split()),
}
_WORD = re.compile(r"[^\W\d_]+")


def language_scores(text: str) -> dict[str, float]:
    """Fraction of words that are stop words of each language.

    Example: language_scores("the cat")["en"] -> 0.5
    """
    words = _WORD.findall(text.lower())
    return {lang: sum(w in sw for w in words) / max(len(words), 1)
            for lang, sw in STOPWORDS.items()}


def detect_language(text: str) -> str:
    """The language of non-Latin text ("zh", "ru", "und-Cyrl" where no profile fits, "und" for a
    script no model lists), else the Latin profile that fits best, or "unknown" (langid.identify).

    Example: detect_language("the cat sat on the mat and looked at the dog") -> "en"
    """
    return identify(text)[0]


def english_margin(text: str) -> float:
    """English's mean log-probability minus the best other language's: > 0 means English wins.

    nan for a text without letters. Example: english_margin("the cat and the hat") > 0 -> True
    """
    s = load_profiles().scores(text)
    other = max(v for k, v in s.items() if k != "en")
    return s["en"] - other if other > -math.inf else math.nan


# ---- Gopher quality rules (Rae et al. 2021, appendix A) -----------------------------------------
@dataclass(frozen=True)
class GopherConfig:
    """Thresholds of the Gopher quality rules; the defaults are the paper's."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_len: float = 3.0
    max_mean_word_len: float = 10.0
    max_symbol_ratio: float = 0.1  # "#" per word, and separately ellipses ("..." or "…") per word
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8  # words with at least one letter
    min_stopwords: int = 2  # of {the, be, to, of, and, that, have, with}
    max_dup_lines: float = 0.3  # repetition: share of lines that repeat an earlier line
    max_top_bigram: float = 0.2  # repetition: share of characters in the most frequent word bigram

    def __post_init__(self) -> None:
        if not 0 <= self.min_words <= self.max_words:
            raise ValueError(f"need 0 <= min_words <= max_words, got {self.min_words} and "
                             f"{self.max_words}")
        if not 0 < self.min_mean_word_len <= self.max_mean_word_len:
            raise ValueError(f"need 0 < min_mean_word_len <= max_mean_word_len, got "
                             f"{self.min_mean_word_len} and {self.max_mean_word_len}")
        for name in ("max_symbol_ratio", "max_bullet_lines", "max_ellipsis_lines",
                     "min_alpha_words",
                     "max_dup_lines", "max_top_bigram"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a fraction and must lie in [0, 1], got "
                                 f"{getattr(self, name)}")


_GOPHER_STOPWORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}
_BULLETS = ("•", "-", "*", "·", "‣", "–", "▪", "◦")


def quality_reason(text: str, config: GopherConfig = GopherConfig()) -> str | None:
    """Why Gopher's rules reject `text`, or None if it passes.

    Example: quality_reason("Hi there.") -> "too few words (2 < 50)"
    """
    c = config
    words = text.split()
    n = len(words)
    if not c.min_words <= n <= c.max_words:
        few = n < c.min_words
        bound = c.min_words if few else c.max_words
        return f"too {'few' if few else 'many'} words ({n} {'<' if few else '>'} {bound})"
    mean = sum(map(len, words)) / n
    if not c.min_mean_word_len <= mean <= c.max_mean_word_len:
        return f"mean word length {mean:.1f} outside [{c.min_mean_word_len}, {c.max_mean_word_len}]"
    # Gopher caps '#' and ellipses separately, each at 0.1 per word.
    ellipses = text.count("...") + text.count("…")
    for name, count in (("'#'", text.count("#")), ("ellipsis", ellipses)):
        if count / n > c.max_symbol_ratio:
            return f"symbol-to-word ratio for {name} {count / n:.2f} > {c.max_symbol_ratio}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    bullets = sum(ln.startswith(_BULLETS) for ln in lines) / len(lines)
    if bullets > c.max_bullet_lines:
        return f"{bullets:.0%} of lines start with a bullet (> {c.max_bullet_lines:.0%})"
    ellipses = sum(ln.endswith(("...", "…")) for ln in lines) / len(lines)
    if ellipses > c.max_ellipsis_lines:
        return f"{ellipses:.0%} of lines end with an ellipsis (> {c.max_ellipsis_lines:.0%})"
    alpha = sum(any(ch.isalpha() for ch in w) for w in words) / n
    if alpha < c.min_alpha_words:
        return f"only {alpha:.0%} of words contain a letter (< {c.min_alpha_words:.0%})"
    stops = len(_GOPHER_STOPWORDS & {w.strip(".,;:!?'\"").lower() for w in words})
    if stops < c.min_stopwords:
        return f"{stops} of Gopher's 8 stop words (< {c.min_stopwords})"
    dup = 1 - len(set(lines)) / len(lines)
    if dup > c.max_dup_lines:
        return f"{dup:.0%} of lines are repeats (> {c.max_dup_lines:.0%})"
    lower = [w.lower() for w in words]
    bigram, count = Counter(zip(lower, lower[1:])).most_common(1)[0] if n > 1 else (("", ""), 0)
    top = count * (len(bigram[0]) + len(bigram[1])) / sum(map(len, words))
    if count > 1 and top > c.max_top_bigram:
        return (f"the bigram {' '.join(bigram)!r} covers {top:.0%} of characters "
                f"(> {c.max_top_bigram:.0%})")
    return None


# ---- PII and toxicity --------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]*\d)")
# IPv6: a run of hex groups and colons, then checked by the standard library's parser, since the
# compressed forms ("2001:db8::1", "::1") are easier to validate than to describe in one pattern.
# The IPv4 tail comes first, or "::ffff:192.0.2.1" would stop at "::ffff:192".
_IPV6 = re.compile(rf"(?<![\w:.])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_OCTET}(?:\.{_OCTET}){{3}}|"
                   r"[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
# Phones: international (+CC and 2-5 groups), national with separators ("(202) 555-0173",
# "020 7946 0958"), and a bare run of exactly ten digits (a North American number written plainly).
_PHONE = re.compile(r"(?<![\w+.])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
                    r"|(?:\(\d{3}\)|\d{2,4})[ .-]\d{3,4}[ .-]\d{3,4}|\d{10})(?![\w]|\.\d)")


def _is_ipv6(s: str) -> bool:
    """A valid IPv6 address with a digit or at least three groups: "a::b" is more likely code."""
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return any(c.isdigit() for c in s) or s.count(":") >= 3


def _phone_digits_ok(s: str) -> bool:
    """E.164 allows at most 15 digits; fewer than 7 is a version number or a year range."""
    return 7 <= sum(c.isdigit() for c in s) <= 15


# Order matters: IPs before phones, or "192.168.100.23" would be read as a phone number; IPv6
# before IPv4, or "::ffff:192.0.2.1" would lose only its IPv4 tail.
_PII = (
    ("ip", _IPV6, "[IP]", _is_ipv6),
    ("ip", _IPV4, "[IP]", None),
    ("email", _EMAIL, "[EMAIL]", None),
    ("phone", _PHONE, "[PHONE]", _phone_digits_ok),
)


def find_pii(text: str) -> list[tuple[str, str]]:
    """Every (kind, matched text) that mask_pii would replace, in the order the passes see them.

    Example: find_pii("call 2831823829") -> [("phone", "2831823829")]
    """
    found: list[tuple[str, str]] = []
    mask_pii(text, found)
    return found


def mask_pii(text: str, found: list | None = None) -> tuple[str, Counter]:
    """Replace e-mails, phone numbers and IPv4 and IPv6 addresses by placeholders; count them.

    `found`, if given, collects (kind, matched text). Example: mask_pii("mail a.b@example.org") ->
    ("mail [EMAIL]", Counter({"email": 1}))
    """
    counts: Counter = Counter()
    for kind, pattern, placeholder, valid in _PII:
        def sub(m: re.Match, kind: str = kind, placeholder: str = placeholder, valid=valid) -> str:
            if valid is not None and not valid(m.group()):
                return m.group()
            counts[kind] += 1
            if found is not None:
                found.append((kind, m.group()))
            return placeholder
        text = pattern.sub(sub, text)
    return text, counts


def toxicity_score(text: str, blocklist: Iterable[str] = BLOCKLIST) -> float:
    """Share of words on the blocklist: a crude score that knows no context.

    Example: toxicity_score("you idiot") -> 0.5
    """
    words = _WORD.findall(text.lower())
    block = blocklist if isinstance(blocklist, (set, frozenset)) else set(blocklist)
    return sum(w in block for w in words) / max(len(words), 1)


# ---- The pipeline ------------------------------------------------------------------------------
@dataclass
class PipelineResult:
    """What `clean_corpus` did: final text per input page (None where removed), which step removed
    it and why."""

    texts: list[str | None]
    removed_by: list[str | None]
    reasons: list[str | None]
    # documents left after each step: the waterfall
    remaining: dict[str, int] = field(default_factory=dict)
    pii_counts: Counter = field(default_factory=Counter)

    def kept(self) -> list[int]:
        return [i for i, t in enumerate(self.texts) if t is not None]


def clean_corpus(pages: Sequence[str], *, gopher: GopherConfig = GopherConfig(),
                 max_toxicity: float = 0.02,
                 threshold: float = 0.8, num_perm: int = 128, language_slack: float = 0.1,
                 progress: bool = True) -> PipelineResult:
    """Run every step of chapter 2 over raw HTML pages. Introduced in chapter 2.

    A page leaves at the language step when it is not detected as English *and* English scores more
    than `language_slack` below the winner: a product list that looks a little Dutch stays for the
    quality rules to judge.

    Example: clean_corpus(htmls).remaining -> {"input": 2000, "extract": 2000, "language": 1900,
    ..., "pii": 1284}
    """
    _check_docs(pages, "pages")
    from tqdm.auto import tqdm

    n = len(pages)
    texts: list[str | None] = [None] * n
    removed: list[str | None] = [None] * n
    reasons: list[str | None] = [None] * n
    counts = {s: 0 for s in STEPS}

    def drop(i: int, step: str, why: str) -> None:
        removed[i], reasons[i], texts[i] = step, why, None
        counts[step] += 1

    for i, page in enumerate(tqdm(pages, desc="filter", disable=not progress)):
        text = normalize_text(html_to_text(page))
        texts[i] = text
        if not text:
            drop(i, "extract", "no text")
        elif english_margin(text) < -language_slack:  # nan (a text without letters) is kept
            drop(i, "language", f"language {detect_language(text)}")
        elif why := quality_reason(text, gopher):
            drop(i, "quality", why)
        elif (tox := toxicity_score(text)) > max_toxicity:
            drop(i, "toxicity", f"toxicity {tox:.3f} > {max_toxicity}")
    for step, dedup in (("exact_dedup", exact_dedup), ("near_dedup", near_dedup)):
        alive = [i for i in range(n) if texts[i] is not None]
        if not alive:
            break
        kwargs = {"threshold": threshold, "num_perm": num_perm} if step == "near_dedup" else {}
        keep = set(dedup([texts[i] for i in alive], **kwargs))
        for j, i in enumerate(alive):
            if j not in keep:
                drop(i, step, "duplicate")
    pii_counts: Counter = Counter()
    for i in range(n):
        if texts[i] is not None:
            texts[i], c = mask_pii(texts[i])
            pii_counts += c
    left, remaining = n, {"input": n}
    for s in STEPS:
        left -= counts[s]
        remaining[s] = left
    return PipelineResult(texts, removed, reasons, remaining, pii_counts)
