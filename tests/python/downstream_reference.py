#!/usr/bin/python3
"""Python's own answers for the building blocks of the downstream harness
(tests/test_downstream.cpp compares the C++ ones with them).

usage:
  downstream_reference.py permutations          JSON [[seed, n, permutation], ...] from
                                                numpy.random.default_rng(seed).permutation(n)
                                                and datasets' Dataset.shuffle(seed)
  downstream_reference.py strings IN OUT        IN: JSON list of strings; OUT: per string
                                                {strip, lower, post, answer, clean}
  downstream_reference.py lossy IN OUT          IN: JSON list of byte lists; OUT: their
                                                bytes.decode("utf-8", "replace")
  downstream_reference.py unicode OUT           {"lower": {cp: lower(chr(cp))} where it differs,
                                                 "space": [cp where chr(cp).isspace()]}
  downstream_reference.py all DIR               all of the above in one process: DIR/strings.json and
                                                DIR/lossy.json in, DIR/permutations.json,
                                                DIR/strings.out.json, DIR/lossy.out.json, DIR/unicode.json out
"""
import os
import json
import string
import sys

import numpy as np


def post(pred):  # the public pred_postprocess_default
    pred = pred.strip().lower()
    idx = pred.find('\n')
    if idx >= 0:
        pred = pred[:idx]
    return pred.strip().lower().translate(str.maketrans('', '', string.punctuation))


def main(argv):
    if argv and argv[0] == 'all':
        d = argv[1]
        stdout = sys.stdout
        with open(os.path.join(d, 'permutations.json'), 'w') as f:
            sys.stdout = f
            main(['permutations'])
        sys.stdout = stdout
        main(['strings', os.path.join(d, 'strings.json'), os.path.join(d, 'strings.out.json')])
        main(['lossy', os.path.join(d, 'lossy.json'), os.path.join(d, 'lossy.out.json')])
        return main(['unicode', os.path.join(d, 'unicode.json')])
    if argv and argv[0] == 'permutations':
        from datasets import Dataset
        out = []
        seeds = list(range(0, 51)) + [2**32 - 1, 2**32, 2**63, 2**64 - 1, 1234567890123]
        for seed in seeds:
            for n in list(range(0, 40)) + [199, 200, 1000, 4097]:
                out.append([seed, n, np.random.default_rng(seed).permutation(n).tolist()])
        for n in [0, 1, 5, 300]:  # datasets' shuffle is numpy's permutation
            ds = Dataset.from_dict({'i': list(range(n))}).shuffle(seed=42)
            out.append([-42, n, list(ds['i'])])
        json.dump(out, sys.stdout)
        return 0
    if argv and argv[0] == 'strings':
        items = json.load(open(argv[1], encoding='utf-8'))
        res = []
        for s in items:
            res.append({'strip': s.strip(), 'lower': s.lower(), 'post': post(s),
                        'answer': s.strip().lower().translate(str.maketrans('', '', string.punctuation)),
                        'clean': __import__('transformers').PreTrainedTokenizerBase.clean_up_tokenization(s)})
        json.dump(res, open(argv[2], 'w', encoding='utf-8'), ensure_ascii=False)
        return 0
    if argv and argv[0] == 'lossy':
        items = json.load(open(argv[1]))
        json.dump([bytes(b).decode('utf-8', errors='replace') for b in items], open(argv[2], 'w', encoding='utf-8'),
                  ensure_ascii=False)
        return 0
    if argv and argv[0] == 'unicode':
        lower = {}
        space = []
        for cp in range(0x110000):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            c = chr(cp)
            if c.lower() != c:
                lower[cp] = c.lower()
            if c.isspace():
                space.append(cp)
        json.dump({'lower': lower, 'space': space}, open(argv[1], 'w', encoding='utf-8'), ensure_ascii=False)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
