"""Goldens for mm_train::metrics::{bleu, cider_d}: coco-caption's scorers (pycocoevalcap's
Bleu and CiderD, pure Python) on captions made by a seeded rule, several references each.

    pip install --target DIR pycocoevalcap numpy
    PYTHONPATH=DIR python3 caption_metrics.py      # writes caption_metrics.json beside it
"""
import json
import os
import random

from pycocoevalcap.bleu.bleu import Bleu
from importlib.metadata import version

from pycocoevalcap.cider.cider import Cider

WORDS = "a an the red blue green small large square circle triangle on left right of top bottom two three".split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def main():
    rng = random.Random(7)
    hyps, refs = {}, {}
    for i in range(40):
        references = [sentence(rng, rng.randint(3, 9)) for _ in range(rng.randint(1, 3))]
        if i % 4 == 0:
            hyp = references[0]
        elif i % 4 == 1:
            words = references[-1].split()
            hyp = " ".join(words[: max(1, len(words) - 2)] + [rng.choice(WORDS)])
        else:
            hyp = sentence(rng, rng.randint(2, 10))
        hyps[i], refs[i] = [hyp], references
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    # pycocoevalcap's Cider is CIDEr-D: clipped weights and the length penalty (sigma 6).
    cider, _ = Cider().compute_score(refs, hyps)
    out = {"reference": f"pycocoevalcap {version('pycocoevalcap')}: Bleu(4), Cider (CIDEr-D)",
           "hyps": [hyps[i][0] for i in sorted(hyps)], "refs": [refs[i] for i in sorted(refs)],
           "bleu": bleu, "cider_d": float(cider)}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "caption_metrics.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(out["bleu"], out["cider_d"])


if __name__ == "__main__":
    main()
