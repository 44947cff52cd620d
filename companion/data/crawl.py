"""A small synthetic "web crawl" with known answers: every planted defect is recorded, so each
cleaning step can be scored against ground truth. Introduced in chapter 2.

Documents are passages of Tiny Shakespeare wrapped in realistic HTML (navigation, cookie banners,
sidebars, footers, script and style blocks). About half carry one planted defect each.
"""
from __future__ import annotations

import html as html_lib
import random
import re
from dataclasses import dataclass
from typing import Any

from .dedup import jaccard, shingles

__all__ = ["DEFECTS", "BLOCKLIST", "STEP_TARGETS", "CrawlDoc", "make_crawl", "passages", "evaluate"]

DEFECTS = ("exact_dup", "near_dup", "spam", "low_quality", "pii", "toxic", "non_english",
           "mojibake")
# Share of documents per defect; the rest are clean. Duplicates copy clean documents only.
_MIX = {"exact_dup": 0.08, "near_dup": 0.10, "spam": 0.04, "low_quality": 0.06, "pii": 0.05,
        "toxic": 0.03, "non_english": 0.05, "mojibake": 0.03}
# The project's own blocklist: deliberately mild words, so the book can print them.
BLOCKLIST = frozenset({"idiot", "idiots", "moron", "morons", "stupid", "loser", "losers", "dumb",
                       "pathetic", "jerk", "jerks", "imbecile", "nitwit", "dimwit", "scumbag",
                       "trash", "garbage", "clown"})
_INSULTS = ["you are a total idiot and a pathetic loser", "what a stupid, dumb take, you moron",
            "only an imbecile or a nitwit would post this garbage", "this author is a clown and a "
                                                                    "jerk",
            "what a load of trash, you dimwit", "go away, scumbag, nobody wants your stupid "
                                                "opinions"]
# Common words per language, for pages that are not English (generated, so no network needed).
_WORDS = {
    "fr": "le la les de des du un une et est dans pour que qui sur pas plus avec nous vous il elle "
          "ce cette "
          "sont mais comme tout bien faire temps jour maison homme femme monde petit grand nouveau "
          "ville".split(),
    "de": "der die das und ist nicht ein eine zu den mit von sich auch auf dem wir sie es im für "
          "aber "
          "nach wie noch haus zeit mann frau welt klein groß neu stadt heute immer".split(),
    "es": "el la los las de del y que en un una es por para con no se su al lo como pero más muy "
          "casa tiempo hombre mujer mundo pequeño grande nuevo ciudad hoy siempre".split(),
}
# Which planted defect each removal step is meant to catch.
STEP_TARGETS = {"language": {"non_english"}, "quality": {"spam", "low_quality"},
                "toxicity": {"toxic"},
                "exact_dedup": {"exact_dup"}, "near_dedup": {"near_dup"}}
_SPAM_KW = ["quills", "ink", "parchment", "wax seals", "goose feathers", "inkwells"]
_SITES = ["quillandink.example", "bardforum.example", "globe-news.example"]
_BYLINES = ["Posted by admin on 2024-03-{:02d}", "Share this: Twitter | Facebook | E-mail",
            "Tags: theatre, verse, drama", "Related reading: more passages from the Folio"]
_FIRST = ["anne", "ben", "clara", "dev", "emma", "felix", "grace", "hugo", "ines", "jon"]
_LAST = ["hathaway", "jonson", "burbage", "kemp", "marlowe", "condell", "heminges"]


@dataclass(frozen=True)
class CrawlDoc:
    """One crawled page and its ground truth. Introduced in chapter 2.

    `text` is what a perfect extractor plus repair returns; `defect` is "clean" or one of DEFECTS;
    `detail` names the variant (e.g. "reordered", "too_short", "fr"); `dup_of` is the index of the
    document this one copies; `pii` lists the planted e-mails, phones and IPs verbatim.
    """

    url: str
    html: str
    text: str
    defect: str = "clean"
    detail: str = ""
    dup_of: int | None = None
    pii: tuple[str, ...] = ()


def passages(text: str, min_words: int = 60, max_words: int = 130) -> list[list[str]]:
    """Split Shakespeare into documents of whole speeches, each a list of one-line paragraphs.

    Example: passages("A:\\nHi there.\\n\\nB:\\nBye.", 1, 9) -> [["A: Hi there. B: Bye."]]
    """
    if not 0 < min_words <= max_words:
        raise ValueError(f"need 0 < min_words <= max_words, got {min_words} and {max_words}")
    docs, paras, words = [], [], 0
    for speech in re.split(r"\n\s*\n", text):
        para = " ".join(speech.split())
        if not para:
            continue
        n = len(para.split())
        if n > max_words:  # a long speech is its own document, cut to length
            para, n = " ".join(para.split()[:max_words]), max_words
        if words + n > max_words and paras:
            if words >= min_words:
                docs.append(_merge_short(paras))
            paras, words = [], 0
        paras.append(para)
        words += n
    if words >= min_words:
        docs.append(_merge_short(paras))
    return docs


def _merge_short(paras: list[str]) -> list[str]:
    """Join very short speeches to the next one: a page gets a few paragraphs, not one-liners."""
    out: list[str] = []
    for p in paras:
        if out and len(out[-1].split()) < 25:
            out[-1] = out[-1] + " " + p
        else:
            out.append(p)
    return out


def _page(rng: random.Random, site: str, title: str, body: list[str]) -> str:
    """Wrap the main text (title + paragraphs) in one of three realistic templates."""
    esc = html_lib.escape
    paras = "\n".join(f"    <p>{esc(p, quote=False)}</p>" for p in body)
    head = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)} "
            f"| {site}</title>\n"
            "<style>body { font-family: serif; } .cookie-banner { position: fixed; }</style>\n"
            "<script>var _q = []; if (a < b && b > c) { document.write('<p>tracking pixel</p>'); "
            "}</script>"
            "</head>\n<body>\n")
    nav = ("<nav class=\"menu\"><ul><li><a href=\"/\">Home</a></li><li><a "
           "href=\"/archive\">Archive</a></li>"
           "<li><a href=\"/about\">About us</a></li></ul></nav>\n")
    cookie = ("<div class=\"cookie-banner\" id=\"cookie-consent\"><p>We use cookies to improve "
              "your experience. "
              "<button>Accept all</button> <button>Settings</button></p></div>\n")
    aside = ("<aside class=\"sidebar\"><h3>Popular posts</h3><ul><li><a href=\"/p/1\">Ten sonnets "
             "you missed</a></li>"
             "<li><a href=\"/p/2\">Subscribe to our newsletter</a></li></ul></aside>\n")
    footer = (f"<footer><p>&copy; 2024 {site}. All rights reserved.</p><p><a "
              f"href=\"/privacy\">Privacy</a> &middot; "
              "<a href=\"/terms\">Terms</a></p></footer>\n<script "
              "src=\"/analytics.js\"></script>\n</body></html>\n")
    style = rng.randrange(3)
    if style == 0:
        main = f"<main><article>\n    <h1>{esc(title)}</h1>\n{paras}\n</article></main>\n"
        return head + nav + cookie + main + aside + footer
    if style == 1:
        main = (f"<div id=\"content\" class=\"post-body\">\n    <h2>{esc(title)}</h2>\n"
                f"{paras}\n</div>\n")
        return head + cookie + nav + main + footer
    main = f"<div class=\"story\">\n    <h1>{esc(title)}</h1>\n{paras}\n</div>\n"
    return head + nav + aside + main + cookie + footer


def _sentence(rng: random.Random, words: list[str]) -> str:
    s = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
    return s[0].upper() + s[1:] + "."


def _pii(rng: random.Random) -> tuple[str, list[str]]:
    """A contact paragraph holding 1-3 planted e-mails, phone numbers and IPs."""
    first, last, num = rng.choice(_FIRST), rng.choice(_LAST), rng.randint(1, 99)  # in this order
    email = f"{first}.{last}{num}@{rng.choice(['example.org', 'mail.example.com'])}"
    d = [rng.randint(0, 9) for _ in range(10)]
    phone = rng.choice([f"+1 555-{d[0]}{d[1]}{d[2]}-{d[3]}{d[4]}{d[5]}{d[6]}",
                        f"(555) {d[0]}{d[1]}{d[2]}-{d[3]}{d[4]}{d[5]}{d[6]}",
                        f"555.{d[0]}{d[1]}{d[2]}.{d[3]}{d[4]}{d[5]}{d[6]}",
                        f"+44 20 7946 {d[0]}{d[1]}{d[2]}{d[3]}"])
    ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    items = rng.sample([("mail", email), ("phone", phone), ("ip", ip)], rng.randint(1, 3))
    parts = {"mail": f"write to {email}", "phone": f"call {phone}", "ip": f"our server at {ip} "
                                                                          f"logs each visit"}
    return "For tickets " + ", or ".join(parts[k] for k, _ in items) + ".", [v for _, v in items]


def _low_quality(rng: random.Random, paras: list[str], kind: str) -> list[str]:
    """Pages that Gopher's rules should reject; `kind` names the rule they trip."""
    words = " ".join(paras).split()
    if kind == "too_short":
        return [" ".join(words[: rng.randint(8, 35)])]
    if kind == "symbols":
        marks = ["###", "$$$", ">>>", "***", "|", "#"]
        return [" ".join(rng.choice(marks + [words[i % len(words)]]) for i in range(60))]
    if kind == "bullets":
        return ["• " + " ".join(words[i: i + 5]) for i in range(0, min(len(words), 80), 5)]
    # "ellipsis"
    return [" ".join(words[i: i + 6]) + " ..." for i in range(0, min(len(words), 80), 6)]


def _spam(rng: random.Random, kind: str) -> list[str]:
    kw = rng.sample(_SPAM_KW, 2)
    if kind == "keywords":
        line = (f"Buy cheap {kw[0]} online, the best {kw[0]} deals and {kw[1]} for sale, "
                f"cheap {kw[0]} now")
        return [line] * rng.randint(6, 10)
    return [f"- {kw[0].title()} model {rng.randint(100, 999)}-{c}: ${rng.randint(1, 99)}.99, SKU "
            f"{rng.randint(1000, 9999)}, in stock"
            for c in "ABCDEFGHJKLMN"[: rng.randint(8, 13)]]


def _edit(rng: random.Random, paras: list[str], kind: str, day: int) -> list[str]:
    """A near-duplicate: a couple of word edits, reordered paragraphs, or different boilerplate
    inside the article."""
    paras = list(paras)
    if kind == "reordered" and len(paras) >= 2:
        return paras[-1:] + paras[:-1]  # the last paragraph moved to the top
    if kind == "boilerplate":
        return [_BYLINES[0].format(day)] + paras + [_BYLINES[rng.randint(1, 3)]]
    words = [p.split() for p in paras]  # "small_edits": change or drop one or two words
    for _ in range(rng.randint(1, 2)):
        k = rng.randrange(len(words))
        i = rng.randrange(len(words[k]))
        if rng.random() < 0.5 or len(words[k]) < 2:
            words[k][i] = rng.choice(["indeed", "truly", "so", "now"])
        else:
            del words[k][i]
    return [" ".join(w) for w in words]


def _garble(text: str) -> tuple[str, str]:
    """Typographic apostrophes and dashes, then the classic mojibake: UTF-8 read as Windows-1252."""
    intended = text.replace("'", "\u2019").replace("--", "\u2014")
    if intended.isascii():  # no apostrophe: give it one, so there is something to garble
        intended += " \u2019Tis so."
    return intended, intended.encode("utf-8").decode("cp1252")


def make_crawl(n_docs: int = 2000, seed: int = 0, text: str | None = None) -> list[CrawlDoc]:
    """A deterministic crawl of `n_docs` pages with planted, recorded defects.
    Introduced in chapter 2.

    Duplicates always come after the page they copy, so "keep the first" is the right answer.
    Example: make_crawl(300)[0].defect -> "clean" or one of DEFECTS.
    """
    if isinstance(n_docs, bool) or not isinstance(n_docs, int):
        raise TypeError(f"n_docs must be an int, got {type(n_docs).__name__}")
    if n_docs < 50:
        raise ValueError(f"n_docs must be at least 50 so every defect is planted, got {n_docs}")
    if text is None:
        from . import load_text
        text = load_text("tinyshakespeare")
    rng = random.Random(seed)
    pool = passages(text)
    rng.shuffle(pool)
    counts = {k: round(v * n_docs) for k, v in _MIX.items()}
    n_base = n_docs - counts["exact_dup"] - counts["near_dup"]
    kinds = [k for k in ("spam", "low_quality", "pii", "toxic", "non_english", "mojibake")
             for _ in range(counts[k])]
    kinds += ["clean"] * (n_base - len(kinds))
    rng.shuffle(kinds)
    needed = sum(k not in ("spam", "non_english") for k in kinds)
    if len(pool) < needed:
        raise ValueError(f"the text yields {len(pool)} passages, fewer than the {needed} pages "
                         f"needed; lower n_docs")
    # Base pages: (sort key, title, paragraphs, defect, detail, pii, intended text or None).
    pages, clean_ids = [], []
    passage = iter(pool)
    for i, kind in enumerate(kinds):
        paras = next(passage) if kind not in ("spam", "non_english") else ["-"]
        detail, pii = "", []
        title = "Readings from the Folio: " + paras[0].split(":")[0][:40].title()
        if kind == "spam":
            detail = rng.choice(["keywords", "list"])
            paras, title = _spam(rng, detail), f"Best {rng.choice(_SPAM_KW)} deals"
        elif kind == "low_quality":
            detail = rng.choice(["too_short", "symbols", "bullets", "ellipsis"])
            paras = _low_quality(rng, paras, detail)
        elif kind == "pii":
            contact, pii = _pii(rng)
            paras = list(paras)
            paras.insert(rng.randint(1, len(paras)), contact)
        elif kind == "toxic":
            insults = rng.sample(_INSULTS, rng.randint(2, 3))
            paras = list(paras) + [f"Comment: {s}!" for s in insults]
        elif kind == "non_english":
            detail = rng.choice(list(_WORDS))
            paras = [" ".join(_sentence(rng, _WORDS[detail]) for _ in range(rng.randint(3, 5)))
                     for _ in range(4)]
            title = _sentence(rng, _WORDS[detail])[:-1]
        elif kind == "clean":
            clean_ids.append(i)
        pages.append([rng.random(), title, paras, kind, detail, tuple(pii)])
    # Duplicates: copies of clean pages, placed after them.
    for kind, n in (("exact_dup", counts["exact_dup"]), ("near_dup", counts["near_dup"])):
        for src in rng.sample(clean_ids, n):
            key, title, paras = pages[src][0], pages[src][1], pages[src][2]
            variants = ["small_edits", "reordered", "boilerplate"]
            detail = "" if kind == "exact_dup" else rng.choice(variants)
            if kind == "near_dup":
                paras = _edit(rng, paras, detail, rng.randint(1, 28))
            pages.append([key + rng.random() * (1 - key), title, paras, kind, detail, (), src])
    order = sorted(range(len(pages)), key=lambda i: pages[i][0])
    position = {old: new for new, old in enumerate(order)}
    docs = []
    for new, old in enumerate(order):
        key, title, paras, kind, detail, pii, *src = pages[old]
        body = "\n\n".join([title] + paras)
        shown, truth = body, body
        if kind == "mojibake":
            truth, shown = _garble(body)
        shown_paras = shown.split("\n\n")
        site = rng.choice(_SITES)
        page = _page(rng, site, shown_paras[0], shown_paras[1:])
        docs.append(CrawlDoc(url=f"https://{site}/p/{new:05d}", html=page, text=truth, defect=kind,
                             detail=detail,
                             dup_of=position[src[0]] if src else None, pii=pii))
    return docs


def evaluate(crawl: list[CrawlDoc], result: Any, threshold: float = 0.8) -> list[dict]:
    """Precision and recall of every step of a `clean_corpus` result against the planted truth.

    A step is scored on the pages that reach it. A near-duplicate counts as a target only when its
    true Jaccard with its source is >= threshold; below that, removing or keeping it is neither
    right nor wrong. The "pii" row scores planted e-mails, phones and IPs in the surviving pages.
    Introduced in chapter 2.
    """
    if len(crawl) != len(result.removed_by):
        raise ValueError(f"the crawl has {len(crawl)} pages but the result "
                         f"{len(result.removed_by)}")
    order = ["extract", "language", "quality", "toxicity", "exact_dedup", "near_dedup"]
    rank = {s: k for k, s in enumerate(order)}
    rows = []
    for step, targets in STEP_TARGETS.items():
        tp = fp = fn = entered = negatives = 0
        for d, by in zip(crawl, result.removed_by):
            if by is not None and rank.get(by, len(order)) < rank[step]:
                continue  # removed before this step
            entered += 1
            target = d.defect in targets
            if target and d.defect == "near_dup":
                sim = jaccard(shingles(d.text), shingles(crawl[d.dup_of].text))
                if sim < threshold:
                    continue  # an ambiguous page: planted, but less similar than the threshold asks
            removed = by == step
            tp += target and removed
            fp += removed and not target
            fn += target and not removed
            negatives += not target
        rows.append({"step": step, "entered": entered, "removed": tp + fp, "tp": tp, "fp": fp,
                     "fn": fn, "precision": tp / (tp + fp) if tp + fp else 1.0,
                     "recall": tp / (tp + fn) if tp + fn else 1.0,
                     "fp_rate": fp / negatives if negatives else 0.0})
    planted = masked = 0
    for d, text in zip(crawl, result.texts):
        if text is not None:
            planted += len(d.pii)
            masked += sum(v not in text for v in d.pii)
    made = sum(result.pii_counts.values())
    rows.append({"step": "pii", "entered": sum(t is not None for t in result.texts), "removed": 0,
                 "tp": masked, "fp": made - masked, "fn": planted - masked,
                 "precision": masked / made if made else 1.0,
                 "recall": masked / planted if planted else 1.0, "fp_rate": float("nan")})
    return rows
