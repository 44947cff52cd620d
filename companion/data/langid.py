"""Language identification with character n-grams (naive Bayes), and real multilingual test text.
Introduced in chapter 2.

The profiles ship with the package (lang_profiles.json.gz) so a pip-installed companion works
offline. They were trained by `build_profiles` on the *training half* of the human translations in
the gettext catalogs (.mo files) that Sphinx and its extensions install; the other half, split by a
hash of the English source string, is the evaluation set, so no evaluated sentence (and no
translation of it) was seen in training. Rebuild with `python -m companion.data.langid`.

Languages that share a non-Latin script (Russian, Ukrainian, Bulgarian, ... in Cyrillic) have
their own profiles (script_profiles.json.gz), trained on the operating system's gettext catalogs
(the shipped file: Debian 12's /usr/share/locale, 300,000 characters per language at most) and
evaluated on Sphinx's. Rebuild with `python -m companion.data.langid scripts`; the n-gram
statistics, not the translations, are what ships.
"""

from __future__ import annotations

import gettext
import gzip
import hashlib
import json
import math
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "LANGUAGES",
    "char_ngrams",
    "NgramLanguageID",
    "train_profiles",
    "load_profiles",
    "catalog_entries",
    "catalog_split",
    "eval_sentences",
    "precision_recall",
    "build_profiles",
    "SCRIPT_LANGUAGE",
    "script_counts",
    "script_posterior",
    "identify",
    "SCRIPT_LANGUAGES",
    "script_catalog_texts",
    "build_script_profiles",
    "load_script_profiles",
]

LANGUAGES = ("en", "fr", "de", "es", "it", "pt", "nl", "ca", "gl", "pl")
PROFILE_PATH = Path(__file__).with_name("lang_profiles.json.gz")
SYSTEM_LOCALE = Path("/usr/share/locale")  # Debian/Ubuntu's gettext catalogs, used when present
# Catalogs whose language code maps to one of ours; regional variants fold into the language.
_LANG_OF = {
    "en_GB": "en",
    "pt_BR": "pt",
    "pt_PT": "pt",
    "de_DE": "de",
    "fr_FR": "fr",
    "es_CO": "es",
}
_PACKAGES = (
    "sphinx",
    "sphinxcontrib",
    "sphinx_book_theme",
    "sphinx_togglebutton",
    "pydata_sphinx_theme",
)
_LETTERS = re.compile(r"[^\W\d_]+")
# Placeholders and markup, then code-like tokens (option_names, paths, -flags, a.b):
# not the language.
_MARKUP = re.compile(r"%\(\w+\)[sd]|%[sdr]|\{[^}]*\}|<[^>]+>|&\w+;|`[^`]*`")
_CODE = re.compile(r"[_=/\\@$]|^-+\w|\w\.\w")


# Letters and the combining marks that follow them: Devanagari writes most vowels as marks
# (the "ि" of "हिंदी"), which the letter class alone would cut out of the word.
_MARKS = "".join(chr(c) for c in range(0x300, 0x10000) if unicodedata.category(chr(c))[0] == "M")
_WORD_WITH_MARKS = re.compile(r"[^\W\d_](?:[^\W\d_]|[" + re.escape(_MARKS) + r"])*")


def _clean(text: str) -> str:
    """Lower-cased words of letters (and their combining marks), joined by one space: what the
    n-grams see.

    Example: _clean("Set html_theme to 'Alabaster'!") -> "set to alabaster"
    """
    return " ".join(_WORD_WITH_MARKS.findall(_strip_code(text.lower())))


def _strip_code(text: str) -> str:
    """The text without placeholders, markup and code-like tokens, which belong to no language."""
    return " ".join(w for w in _MARKUP.sub(" ", text).split() if not _CODE.search(w))


def char_ngrams(text: str, n_max: int = 4) -> Counter:
    """Counts of character 1..n_max-grams of each word padded by spaces.

    Example: char_ngrams("Ab", 2) -> Counter({" ": 2, "a": 1, "b": 1, " a": 1, "ab": 1, "b ": 1})
    """
    if n_max < 1:
        raise ValueError(f"n_max must be at least 1, got {n_max}")
    counts: Counter = Counter()
    for word in _clean(text).split():
        w = f" {word} "
        for n in range(1, n_max + 1):
            counts.update(w[i : i + n] for i in range(len(w) - n + 1))
    return counts


@dataclass
class NgramLanguageID:
    """Log-probabilities of n-grams per language; a text's score is the sum over its n-grams.

    Example: NgramLanguageID.from_counts({"en": ..., "fr": ...}).detect("the cat sat") -> "en"
    """

    languages: tuple[str, ...]
    index: dict[str, int]  # n-gram -> row of `logp`
    logp: np.ndarray  # (V, L) log P(n-gram | language); unseen n-grams get `floor`
    floor: np.ndarray  # (L,)
    n_max: int = 4
    min_score: float = -math.inf  # below this mean log-probability, no known language fits

    def __post_init__(self) -> None:
        self._words: dict[str, tuple[np.ndarray, int]] = {}  # word -> (summed log-probs, n-grams)

    def _word(self, word: str) -> tuple[np.ndarray, int]:
        """A word's n-grams scored once and cached: words repeat, so a page costs ~a lookup each."""
        hit = self._words.get(word)
        if hit is None:
            w = f" {word} "
            grams = [w[i : i + n] for n in range(1, self.n_max + 1) for i in range(len(w) - n + 1)]
            rows = [self.index[g] for g in grams if g in self.index]
            vec = self.logp[rows].sum(axis=0) + self.floor * (len(grams) - len(rows))
            hit = self._words[word] = (vec, len(grams))
            if len(self._words) > 200_000:
                self._words.clear()  # bound the memory on a long stream of rare words
        return hit

    def scores(self, text: str, min_letters: int = 1) -> dict[str, float]:
        """Mean log-probability per n-gram under each language (higher is more likely);
        -inf everywhere for a text with fewer than `min_letters` letters."""
        words = _clean(text[:2000]).split()  # the first 2,000 characters decide
        if sum(map(len, words)) < min_letters:
            return {lang: float("-inf") for lang in self.languages}
        freq = Counter(words)
        vecs, sizes = zip(*(self._word(w) for w in freq))
        weights = np.fromiter(freq.values(), dtype=float, count=len(freq))
        score = weights @ np.stack(vecs) / (weights @ np.asarray(sizes, dtype=float))
        return dict(zip(self.languages, score.tolist()))

    def log_likelihoods(self, text: str) -> dict[str, float]:
        """Naive Bayes log P(text | language): the mean score times the number of n-grams."""
        words = _clean(text[:2000]).split()
        if not words:
            return {lang: 0.0 for lang in self.languages}  # no evidence: every language alike
        freq = Counter(words)
        vecs, _ = zip(*(self._word(w) for w in freq))
        weights = np.fromiter(freq.values(), dtype=float, count=len(freq))
        return dict(zip(self.languages, (weights @ np.stack(vecs)).tolist()))

    def predict_proba(self, text: str) -> dict[str, float]:
        """P(language | text) among the known languages, uniform prior: a softmax of the
        log-likelihoods. Naive Bayes counts correlated n-grams as independent evidence, so these
        are overconfident on long texts. Example: max(m.predict_proba("the cat").values()) <= 1
        """
        ll = self.log_likelihoods(text)
        z = np.asarray(list(ll.values()))
        p = np.exp(z - z.max())
        return dict(zip(ll, (p / p.sum()).tolist()))

    def detect(self, text: str, min_letters: int = 10) -> str:
        """The most likely language, or "unknown": fewer than `min_letters` letters, or a text that
        fits no profile well (best score below `min_score`, e.g. Albanian or Korean)."""
        s = self.scores(text, min_letters)
        best = max(s, key=s.get)
        return best if s[best] >= self.min_score and s[best] > -math.inf else "unknown"

    def to_json(self) -> dict:
        grams = sorted(self.index, key=self.index.get)
        return {
            "languages": list(self.languages),
            "n_max": self.n_max,
            "min_score": self.min_score,
            "floor": [round(f, 3) for f in self.floor.tolist()],
            "ngrams": grams,
            "logp": np.round(self.logp, 3).tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> NgramLanguageID:
        return cls(
            tuple(d["languages"]),
            {g: i for i, g in enumerate(d["ngrams"])},
            np.asarray(d["logp"], dtype=float),
            np.asarray(d["floor"], dtype=float),
            int(d["n_max"]),
            float(d["min_score"]),
        )


def train_profiles(
    texts: dict[str, Iterable[str]], n_max: int = 4, top_k: int = 4000, alpha: float = 0.5
) -> NgramLanguageID:
    """Naive Bayes over char n-grams: keep each language's `top_k` n-grams, add-alpha smoothed.

    Example: train_profiles({"en": ["the cat"], "fr": ["le chat"]}).detect("the hat") -> "en"
    """
    if not texts:
        raise ValueError("texts is empty: pass at least one language with text")
    counts: dict[str, Counter] = {}
    for lang, ts in texts.items():
        counts[lang] = Counter()
        for t in ts:
            counts[lang].update(
                char_ngrams(t, n_max)
            )  # update in place: sum() would copy each time
    for lang, c in counts.items():
        if not c:
            raise ValueError(f"language {lang!r} has no letters to learn from")
    vocab = sorted({g for c in counts.values() for g, _ in c.most_common(top_k)})
    index = {g: i for i, g in enumerate(vocab)}
    langs = tuple(texts)
    logp = np.empty((len(vocab), len(langs)))
    floor = np.empty(len(langs))
    for j, lang in enumerate(langs):
        c = counts[lang]
        denom = sum(c.values()) + alpha * (len(vocab) + 1)  # +1: one bucket for all unseen n-grams
        logp[:, j] = [math.log((c.get(g, 0) + alpha) / denom) for g in vocab]
        floor[j] = math.log(alpha / denom)
    return NgramLanguageID(langs, index, logp, floor, n_max)


# ---- Scripts: a first answer for text the Latin-script profiles cannot read ---------------------
# ISO 15924 codes. A script that one language owns gets that language; a script shared by many
# (Cyrillic: Russian, Ukrainian, Bulgarian, ...) gets BCP 47's "und" (undetermined) plus the script.
# "Zyyy" gathers every script not listed (Bengali, Georgian, Tamil, ...): without a system of its
# own, such letters were "rare" under every system alike and the answer fell to whichever spread
# its rare mass thinnest (Japanese). Its answer is "und", language undetermined.
SCRIPT_LANGUAGE = {"Hani": "zh", "Jpan": "ja", "Hang": "ko", "Grek": "el", "Cyrl": "und-Cyrl",
                   "Arab": "und-Arab", "Deva": "und-Deva", "Hebr": "he", "Thai": "th",
                   "Latn": "und-Latn", "Zyyy": "und"}
_SCRIPT_OF_NAME = {"CJK": "Hani", "HIRAGANA": "Kana", "KATAKANA": "Kana", "HANGUL": "Hang",
                   "CYRILLIC": "Cyrl", "ARABIC": "Arab", "DEVANAGARI": "Deva", "GREEK": "Grek",
                   "HEBREW": "Hebr", "THAI": "Thai", "LATIN": "Latn"}


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    """The script of one letter from the first word of its Unicode name; "Zyyy" if unlisted."""
    return _SCRIPT_OF_NAME.get(unicodedata.name(ch, "?").split(" ")[0], "Zyyy")


def script_counts(text: str) -> Counter:
    """Letters and combining marks of each script (ISO 15924 code) in the first 2,000 characters,
    code-like tokens left out. Marks count because Devanagari writes most vowels with them.

    Example: script_counts("Привет, world") -> Counter({"Cyrl": 6, "Latn": 5})
    """
    return Counter(_script(c) for c in _strip_code(text[:2000])
                   if c.isalpha() or unicodedata.category(c).startswith("M"))


def script_posterior(text: str, borrowed: float = 0.25, eps: float = 0.05) -> dict[str, float]:
    """P(writing system | letters), uniform prior, each letter drawn independently.

    Latin text draws Latin letters with probability 1 - eps. Text in any other system draws its
    own letters with 1 - borrowed - eps and Latin ones with `borrowed`: names, commands and loan
    words in Latin script are common on the web and in software. Japanese draws kana (60%) and
    Han (40%) among its own letters. The rest, eps, is spread over all other scripts.
    Example: script_posterior("Γειά σου κόσμε")["Grek"] > 0.99 -> True
    """
    if not (0 < eps < 1 and 0 <= borrowed < 1 - eps):
        raise ValueError(f"need 0 < eps < 1 and 0 <= borrowed < 1 - eps, got {eps}, {borrowed}")
    counts = script_counts(text)
    if not counts:
        return {}
    scripts = set(SCRIPT_LANGUAGE) - {"Jpan"} | {"Kana", "Zyyy"}
    own = {s: {s: 1.0} for s in SCRIPT_LANGUAGE if s != "Jpan"} | {"Jpan": {"Kana": .6, "Hani": .4}}
    log_post = {}
    for system, mix in own.items():
        lent = 0.0 if system == "Latn" else borrowed
        p = {sc: (1 - eps - lent) * w for sc, w in mix.items()} | ({"Latn": lent} if lent else {})
        rest = eps / (len(scripts) - len(p))
        log_post[system] = sum(n * math.log(p.get(sc, rest)) for sc, n in counts.items())
    z = max(log_post.values())
    total = sum(math.exp(v - z) for v in log_post.values())
    return {k: math.exp(v - z) / total for k, v in log_post.items()}


def identify(text: str, min_letters: int = 10) -> tuple[str, float]:
    """(language, probability): the writing system first, then, for Latin script, the n-gram model.

    Non-Latin text gets its script's language ("zh", "ja", "ko", "el", ...) with the script
    posterior; in a script that several languages share (Cyrillic, Arabic, Devanagari), the best
    of SCRIPT_LANGUAGES' profiles, with P(script) * P(language | text), or "und-Cyrl" etc. where
    no profile fits; "und" for a script none of them lists (Bengali, Georgian, ...). Latin text
    gets load_profiles().detect (possibly "unknown") with
    P(Latin) * P(best language | text) among the ten languages the profiles know.
    Example: identify("这是一个用中文写的句子，没有别的语言。") -> ("zh", 0.9999998...)
    """
    post = script_posterior(text)
    if sum(script_counts(text).values()) < min_letters or not post:
        return "unknown", float("nan")
    system = max(post, key=post.get)
    if system != "Latn":
        within = load_script_profiles().get(system)
        label = within.detect(text, min_letters) if within is not None else "unknown"
        if label == "unknown":  # one language per script, no profiles, or none fits
            return SCRIPT_LANGUAGE[system], post[system]
        return label, post[system] * within.predict_proba(text)[label]
    model = load_profiles()
    proba = model.predict_proba(text)
    best = max(proba, key=proba.get)
    label = model.detect(text, min_letters)
    return (best if label != "unknown" else "unknown"), post["Latn"] * proba[best]


@lru_cache(maxsize=1)
def load_profiles(path: str | None = None) -> NgramLanguageID:
    """The shipped profiles (trained on the catalogs' training half). Introduced in chapter 2."""
    with gzip.open(path or PROFILE_PATH, "rt", encoding="utf-8") as f:
        return NgramLanguageID.from_json(json.load(f))


# ---- Real text: the human translations shipped with Sphinx -------------------------------------
def _site_packages() -> list[Path]:
    import sphinx  # the catalogs live beside Sphinx; ImportError says plainly what is missing

    return [Path(sphinx.__file__).parent.parent]


def catalog_entries(roots: Iterable[Path] | None = None) -> list[tuple[str, str, str]]:
    """(language, text, English source) for every translated message in the installed catalogs.

    English text is the source string itself (msgid), listed once. Sorted, so the list is
    reproducible for a given set of installed packages.
    Example: ("fr", "Index du module", "Module Index").
    """
    out: set[tuple[str, str, str]] = set()
    for root in roots or _site_packages():
        for pkg in _PACKAGES:
            for mo in sorted((root / pkg).glob("**/LC_MESSAGES/*.mo")):
                code = mo.parent.parent.name
                lang = _LANG_OF.get(code, code)
                with open(mo, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - the raw table
                for key, value in catalog.items():
                    if not isinstance(key, str) or not key or not value.strip():
                        continue  # the header (empty key) and plural forms (tuple keys)
                    out.add(("en", key, key))
                    if value != key:
                        out.add((lang, value, key))
    return sorted(out)


def catalog_split(source: str) -> str:
    """'train' or 'eval' by a hash of the English source: all translations of one message share a
    side, so no evaluated sentence or translation of it is trained on. Example: catalog_split("x").
    """
    return "eval" if hashlib.sha1(source.encode("utf-8")).digest()[0] % 2 == 0 else "train"


def _probe(source: str) -> bool:
    """A quarter of the training half, held back to calibrate `min_score`."""
    return hashlib.sha1(source.encode("utf-8")).digest()[1] % 4 == 0


def eval_sentences(
    min_words: int = 8, roots: Iterable[Path] | None = None
) -> list[tuple[str, str]]:
    """(language code, sentence) of the evaluation half, any catalog language, >= min_words words.

    Example: eval_sentences()[0] -> ("ar", "..."); languages outside LANGUAGES stay, as negatives.
    """
    entries = catalog_entries(roots)
    train = {text for _, text, source in entries if catalog_split(source) == "train"}
    # A translation shared by two messages (e.g. "Foo" and "Foo:") may sit on both sides: drop it.
    return [
        (lang, text)
        for lang, text, source in entries
        if catalog_split(source) == "eval"
        and text not in train
        and len(_LETTERS.findall(text)) >= min_words
    ]


def precision_recall(truth: list[str], pred: list[str], languages: Iterable[str]) -> list[dict]:
    """Per language: true/false positives, false negatives, precision and recall, with counts.

    Example: precision_recall(["en", "fr"], ["en", "en"], ["en"]) -> [{"lang": "en", "tp": 1,
    "fp": 1, "fn": 0, "precision": 0.5, "recall": 1.0, "support": 1}]
    """
    if len(truth) != len(pred):
        raise ValueError(f"truth has {len(truth)} labels but pred {len(pred)}")
    rows = []
    for lang in languages:
        tp = sum(t == lang and p == lang for t, p in zip(truth, pred))
        fp = sum(t != lang and p == lang for t, p in zip(truth, pred))
        fn = sum(t == lang and p != lang for t, p in zip(truth, pred))
        rows.append(
            {
                "lang": lang,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "support": tp + fn,
                "precision": tp / (tp + fp) if tp + fp else 1.0,
                "recall": tp / (tp + fn) if tp + fn else 1.0,
            }
        )
    return rows


def system_catalog_texts(root: Path = SYSTEM_LOCALE, cap: int = 200_000) -> dict[str, list[str]]:
    """Up to `cap` characters per language from the operating system's gettext catalogs (coreutils,
    tar, apt, ...): human translations from another domain than Sphinx's. English is their msgids.
    """
    texts: dict[str, list[str]] = defaultdict(list)
    size: Counter = Counter()
    codes = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    for code in (c for c in codes if _LANG_OF.get(c, c) in LANGUAGES):
        lang = _LANG_OF.get(code, code)
        for mo in sorted((root / code / "LC_MESSAGES").glob("*.mo")):
            try:
                with open(mo, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001
            except (OSError, LookupError, ValueError, IndexError):
                continue  # a catalog with a legacy encoding or a malformed header: skip it
            for key, value in sorted(
                (k, v) for k, v in catalog.items() if isinstance(k, str) and k
            ):
                for tl, t in (("en", key), (lang, value)):
                    if tl in LANGUAGES and size[tl] < cap and len(_LETTERS.findall(t)) >= 3:
                        texts[tl].append(t)
                        size[tl] += len(t)
    return texts


def build_profiles(
    path: Path = PROFILE_PATH,
    roots: Iterable[Path] | None = None,
    system: Path | None = SYSTEM_LOCALE,
) -> NgramLanguageID:
    """Train on the Sphinx catalogs' training half (plus, where present, the system's catalogs) in
    LANGUAGES and write the gzipped JSON profile.

    `min_score` is calibrated inside the training half: train without a quarter of it, and take
    the 1st percentile of the best scores of that quarter's sentences of 8 or more words.
    """
    texts: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for lang, text, source in catalog_entries(roots):
        if lang in LANGUAGES and catalog_split(source) == "train":
            texts[lang].append((text, source))
    extra = system_catalog_texts(system) if system is not None else {}
    probe = train_profiles(
        {
            lang: [t for t, s in texts[lang] if not _probe(s)] + extra.get(lang, [])
            for lang in LANGUAGES
        }
    )
    held = [
        t for ts in texts.values() for t, s in ts if _probe(s) and len(_LETTERS.findall(t)) >= 8
    ]
    best = [max(probe.scores(t).values()) for t in held]
    model = train_profiles(
        {lang: [t for t, _ in texts[lang]] + extra.get(lang, []) for lang in LANGUAGES}
    )
    model.min_score = round(float(np.percentile(best, 1)), 2)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: the same input gives the same bytes
        f.write(json.dumps(model.to_json(), ensure_ascii=False, separators=(",", ":")).encode())
    load_profiles.cache_clear()
    return model


# ---- Languages that share a script: profiles from the operating system's catalogs ------------
# Evaluated on the Sphinx catalogs, which they never saw (another domain, other translators).
SCRIPT_LANGUAGES = {"Cyrl": ("ru", "uk", "bg", "sr", "mk", "be"), "Arab": ("ar", "fa", "ur"),
                    "Deva": ("hi", "mr", "ne")}
SCRIPT_PROFILE_PATH = Path(__file__).with_name("script_profiles.json.gz")


def script_catalog_texts(
    script: str, languages: Iterable[str], root: Path = SYSTEM_LOCALE, cap: int = 300_000
) -> dict[str, list[tuple[str, str]]]:
    """(translation, English source) per language from the system's catalogs, up to `cap`
    characters each, keeping only translations mostly written in `script` (ISO 15924).

    Example: script_catalog_texts("Cyrl", ["ru"])["ru"][0] -> ("... файл ...", "... file ...")
    """
    out: dict[str, list[tuple[str, str]]] = {}
    for lang in languages:
        out[lang], size = [], 0
        for mo in sorted((root / lang / "LC_MESSAGES").glob("*.mo")):
            try:
                with open(mo, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001
            except (OSError, LookupError, ValueError, IndexError):
                continue  # a legacy encoding or a malformed header: skip the catalog
            for key, value in sorted(
                (k, v) for k, v in catalog.items() if isinstance(k, str) and k
            ):
                counts = script_counts(value)
                if size < cap and counts and counts.most_common(1)[0][0] == script:
                    out[lang].append((value, key))
                    size += len(value)
    return out


def build_script_profiles(
    path: Path = SCRIPT_PROFILE_PATH, root: Path = SYSTEM_LOCALE, n_max: int = 3,
    top_k: int = 2000,
) -> dict[str, NgramLanguageID]:
    """Train one NgramLanguageID per script of SCRIPT_LANGUAGES on the system's catalogs, with
    `min_score` calibrated as in build_profiles, and write them as one gzipped JSON.
    """
    models = {}
    for script, langs in SCRIPT_LANGUAGES.items():
        texts = script_catalog_texts(script, langs, root)
        if not all(texts.values()):
            missing = [lang for lang, ts in texts.items() if not ts]
            raise FileNotFoundError(f"no {script} catalogs for {missing} under {root}")
        probe = train_profiles(
            {lang: [t for t, k in ts if not _probe(k)] for lang, ts in texts.items()}, n_max, top_k
        )
        held = [t for ts in texts.values() for t, k in ts
                if _probe(k) and len(_LETTERS.findall(t)) >= 4]
        best = [max(probe.scores(t).values()) for t in held]
        model = train_profiles({lang: [t for t, _ in ts] for lang, ts in texts.items()},
                               n_max, top_k)
        model.min_score = round(float(np.percentile(best, 1)), 2)
        models[script] = model
    blob = {script: m.to_json() for script, m in models.items()}
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps(blob, ensure_ascii=False, separators=(",", ":")).encode())
    load_script_profiles.cache_clear()
    return models


@lru_cache(maxsize=1)
def load_script_profiles(path: str | None = None) -> dict[str, NgramLanguageID]:
    """The shipped per-script profiles: {"Cyrl": model of ru, uk, bg, ...}. Chapter 2."""
    with gzip.open(path or SCRIPT_PROFILE_PATH, "rt", encoding="utf-8") as f:
        return {script: NgramLanguageID.from_json(d) for script, d in json.load(f).items()}


if __name__ == "__main__":
    if sys.argv[1:] == ["scripts"]:  # python -m companion.data.langid scripts
        for script, m in build_script_profiles().items():
            print(f"{script}: {len(m.index):,} n-grams, {', '.join(m.languages)}, "
                  f"min_score {m.min_score}", file=sys.stderr)
        sys.exit(0)
    m = build_profiles()
    print(
        f"wrote {PROFILE_PATH} ({PROFILE_PATH.stat().st_size:,} bytes): {len(m.index):,} n-grams, "
        f"languages {', '.join(m.languages)}",
        file=sys.stderr,
    )
