"""Data: fetch registered files (chapter 1); the labeled crawl, cleaning, language ID, quality,
dedup and decontamination (chapter 2); token shards (chapters 2-3)."""
from .clean import (STEPS, GopherConfig, PipelineResult, clean_corpus, detect_language,
                    english_margin, find_pii, fix_mojibake, html_to_text, language_scores, mask_pii,
                    normalize_text, quality_reason, toxicity_score)
from .crawl import BLOCKLIST, DEFECTS, STEP_TARGETS, CrawlDoc, evaluate, make_crawl
from .dedup import (candidate_probability, estimate_jaccard, exact_dedup, jaccard,
                    line_doc_counts, line_dedup, lsh_candidate_pairs, lsh_params,
                    minhash_signatures, near_dedup, shingles, union_find_clusters)
from .langid import (NgramLanguageID, char_ngrams, eval_sentences, identify, load_profiles,
                     precision_recall, script_posterior, train_profiles)
from .registry import (REGISTRY, ChecksumError, DataError, DataFile, DataUnavailableError,
                       cache_dir, fetch)
from .shards import FORMAT_VERSION, Shard, read_shard, sha256_text, shard_dtype, write_shard

__all__ = [
    "REGISTRY", "ChecksumError", "DataError", "DataFile", "DataUnavailableError", "cache_dir",
    "fetch", "load_text",
    "FORMAT_VERSION", "Shard", "read_shard", "sha256_text", "shard_dtype", "write_shard",
    "BLOCKLIST", "DEFECTS", "STEP_TARGETS", "CrawlDoc", "evaluate", "make_crawl",
    "STEPS", "GopherConfig", "PipelineResult", "clean_corpus", "detect_language", "english_margin",
    "find_pii", "fix_mojibake", "html_to_text", "language_scores", "mask_pii", "normalize_text",
    "quality_reason", "toxicity_score",
    "NgramLanguageID", "char_ngrams", "eval_sentences", "identify", "load_profiles",
    "precision_recall", "script_posterior", "train_profiles",
    "candidate_probability", "estimate_jaccard", "exact_dedup", "jaccard", "line_doc_counts",
    "line_dedup", "lsh_candidate_pairs",
    "lsh_params", "minhash_signatures", "near_dedup", "shingles", "union_find_clusters",
]


def load_text(name: str = "tinyshakespeare") -> str:
    """The registered text file `name`, decoded as UTF-8. Introduced in chapter 1."""
    text = fetch(name).read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{name}: the file is empty; a corpus needs at least one character")
    return text
