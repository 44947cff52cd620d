"""Record the reference toxicity classifier's P(offensive) for every Tiny Shakespeare speech.

Reference: alt-profanity-check (pinned in requirements.txt), a linear SVM with calibrated
probabilities that ships inside its wheel, trained on human-labelled offensive and clean text. It
needs scikit-learn, so chapter 2 reads the recorded scores from companion/data/
toxicity_reference.json.gz; tests/test_real_pages.py rechecks a sample when the package is there.

Run: COMPANION_DATA_DIR=... python tools/make_toxicity_reference.py
"""
from __future__ import annotations

import gzip
import hashlib
import json
from importlib.metadata import version

from profanity_check import predict_prob

from companion.data import load_text
from companion.data.real_pages import TOXICITY_PATH, speeches


def main() -> None:
    sp = speeches(load_text("tinyshakespeare"))
    probs = predict_prob(sp)
    meta = {"reference": f"alt-profanity-check {version('alt-profanity-check')}, predict_prob",
            "text": "Tiny Shakespeare speeches of >= 8 words, companion.data.real_pages.speeches"}
    d = {"meta": meta, "sha256_12": [hashlib.sha256(s.encode()).hexdigest()[:12] for s in sp],
         "p_offensive": [round(float(p), 4) for p in probs]}
    with gzip.open(TOXICITY_PATH, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(d, f)
    print(f"{len(sp)} speeches -> {TOXICITY_PATH} ({TOXICITY_PATH.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
