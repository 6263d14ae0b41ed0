#!/usr/bin/python3
"""Small local task sets for `doremi downstream`, built from the quickstart corpus.

No machine of ours reaches a dataset hub, so these folders stand in for the five
public tasks: each is written with `datasets.save_to_disk` in its task's real
schema (splits, field names and types as the hub's copies have them), but the
questions are generated here from the quickstart corpus
(examples/data/quickstart/), by fixed rules, not taken from the public sets:

  trivia_qa          The Devil's Dictionary (literature domain): a definition's first
                     sentence -> its headword ("Which word does The Devil's Dictionary
                     define as: ...?").  Aliases: the headword as printed and title-cased.
  natural_questions  The King James Bible chapters (literature domain): a verse -> the
                     name of its book ("which book of the king james bible says ...").
  web_questions      The Devil's Dictionary: a headword -> its part of speech
                     ("noun", "verb", "adjective", ...; aliases include the printed
                     abbreviation, e.g. "n").
  lambada            Held-out text: sentences of the quickstart's validation split
                     (documents the models never trained on), literature and docs
                     domains; the target is the sentence's last word.
  squad_v2           Titles are Bible chapters; the background is three consecutive
                     verses; an answerable question asks for the last word of one of
                     them (its span in the background), an unanswerable one for a
                     verse that is not in the background (no answer: "unanswerable").

The QA answers occur in the corpus the models were trained on (closed-book recall
of that text, as the public tasks test recall of web text); lambada's passages do
not. These are not the public benchmarks and their numbers are not comparable with
published ones. Deterministic: the same corpus gives the same folders.

  /usr/bin/python3 examples/downstream/make_local_tasks.py \\
      --heldout doremi-quickstart/data --output tasks

--heldout is the quickstart's preprocessed data folder (`doremi quickstart` writes it
to <output>/data, byte tokenizer): its validation split holds the held-out documents.
"""
import argparse
import json
import os
import re
import sys

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "data", "quickstart")

POS = {"n": "noun", "v": "verb", "v.t": "verb", "v.i": "verb", "adj": "adjective", "adv": "adverb",
       "pp": "past participle", "pron": "pronoun", "prep": "preposition", "conj": "conjunction",
       "interj": "interjection", "x": "exclamation"}
ENTRY = re.compile(r"^([A-Z][A-Z'\- ]*[A-Z]), (n|v|v\.t|v\.i|adj|adv|pp|pron|prep|conj|interj|x)\.\s+(.*)$", re.S)
VERSE = re.compile(r"^(\d+) (.*)$")


def read_domain(name):
    with open(os.path.join(CORPUS, name + ".jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def devil_entries(docs):
    """(headword, part of speech abbreviation, first sentence of the definition)."""
    out = []
    for doc in docs:
        for para in doc.split("\n\n"):
            m = ENTRY.match(para.strip())
            if not m:
                continue
            word, pos, definition = m.group(1), m.group(2), " ".join(m.group(3).split())
            first = re.split(r"(?<=[.!?])\s", definition, maxsplit=1)[0]
            if 4 <= len(first.split()) <= 25 and len(word.split()) == 1:
                out.append((word, pos, first))
    return out


def bible_chapters(docs):
    """(book, chapter, [verse texts]) of the KJV chapters ("<Book> <n>" then numbered verses)."""
    out = []
    for doc in docs:
        head, _, body = doc.partition("\n\n")
        m = re.match(r"^(.+) (\d+)$", head.strip())
        if not m:
            continue
        verses = [VERSE.match(line).group(2) for line in body.split("\n") if VERSE.match(line)]
        if verses:
            out.append((m.group(1), int(m.group(2)), verses))
    return out


def heldout_documents(data, domain):
    """The documents of the quickstart's validation split of `domain` (byte tokens, end-of-text 256)."""
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    if manifest.get("vocab_size") != 257:
        sys.exit(f"error: {data} was not preprocessed with the byte tokenizer (vocab_size {manifest.get('vocab_size')})")
    folder = os.path.join(data, "validation", manifest["domains"][domain]["folder"])
    tokens = np.concatenate([np.fromfile(os.path.join(folder, f), dtype=np.dtype(manifest["token_dtype"]))
                             for f in sorted(os.listdir(folder)) if f.endswith(".bin")])
    cuts = np.flatnonzero(tokens == 256)
    docs, start = [], 0
    for c in cuts:
        docs.append(bytes(tokens[start:c].astype(np.uint8)).decode("utf-8", errors="replace"))
        start = c + 1
    return docs


def split_alternate(rows):
    """Every fourth row to the shot pool (train), the others to evaluation."""
    return [r for i, r in enumerate(rows) if i % 4 == 0], [r for i, r in enumerate(rows) if i % 4 != 0]


def trivia_qa(entries):
    features = Features({
        "question": Value("string"), "question_id": Value("string"), "question_source": Value("string"),
        "entity_pages": Sequence({"doc_source": Value("string"), "filename": Value("string"),
                                  "title": Value("string"), "wiki_context": Value("string")}),
        "search_results": Sequence({"description": Value("string"), "filename": Value("string"),
                                    "rank": Value("int32"), "title": Value("string"), "url": Value("string"),
                                    "search_context": Value("string")}),
        "answer": {"aliases": Sequence(Value("string")), "normalized_aliases": Sequence(Value("string")),
                   "matched_wiki_entity_name": Value("string"),
                   "normalized_matched_wiki_entity_name": Value("string"), "normalized_value": Value("string"),
                   "type": Value("string"), "value": Value("string")}})
    rows = []
    for i, (word, _, first) in enumerate(entries):
        aliases = [word.title(), word, word.lower()]
        rows.append({"question": f"Which word does The Devil's Dictionary define as: {first}",
                     "question_id": f"devil_{i}", "question_source": "doremi quickstart corpus",
                     "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
                     "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                                        "search_context": []},
                     "answer": {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
                                "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                                "normalized_value": word.lower(), "type": "FreeForm", "value": word.title()}})
    train, validation = split_alternate(rows)
    return DatasetDict({"train": Dataset.from_list(train, features=features),
                        "validation": Dataset.from_list(validation, features=features)})


def natural_questions(chapters):
    features = Features({"context": Value("string"), "question": Value("string"),
                         "answers": Sequence(Value("string")), "key": Value("string"),
                         "labels": Sequence({"start": Sequence(Value("int32")), "end": Sequence(Value("int32"))})})
    rows = []
    for book, chapter, verses in chapters:
        for v in range(0, len(verses), 7):  # a few verses a chapter
            text = verses[v].rstrip(".,;:")
            if 6 <= len(text.split()) <= 30:
                rows.append({"context": "", "question": f"which book of the king james bible says {text.lower()}",
                             "answers": [book], "key": f"{book} {chapter}:{v + 1}",
                             "labels": {"start": [], "end": []}})
    train, validation = split_alternate(rows)
    return DatasetDict({"train": Dataset.from_list(train, features=features),
                        "validation": Dataset.from_list(validation, features=features)})


def web_questions(entries):
    features = Features({"url": Value("string"), "question": Value("string"), "answers": Sequence(Value("string"))})
    rows = [{"url": "", "question": f"what part of speech is {word.lower()} in the devil's dictionary?",
             "answers": [POS[pos], pos]} for word, pos, _ in entries]
    train, test = split_alternate(rows)
    return DatasetDict({"train": Dataset.from_list(train, features=features),
                        "test": Dataset.from_list(test, features=features)})


def lambada(data):
    features = Features({"text": Value("string"), "domain": Value("string")})
    rows = []
    for domain in ("literature", "docs"):
        for doc in heldout_documents(data, domain):
            for para in doc.split("\n\n"):
                lines = [line.strip() for line in para.split("\n")]
                if all(VERSE.match(line) for line in lines):  # Bible verses, without their numbers
                    lines = [VERSE.sub(r"\2", line) for line in lines]
                else:  # prose wrapped at line ends: one paragraph
                    lines = [" ".join(" ".join(lines).split())]
                for sentence in (s for line in lines for s in re.split(r"(?<=[.!?])\s+", line)):
                    words = sentence.split(" ")
                    last = words[-1].rstrip(".!?,;:\"')")
                    if 10 <= len(words) <= 40 and last.isalpha() and all(w for w in words):
                        rows.append({"text": " ".join(words[:-1] + [last]), "domain": domain})
    train, test = split_alternate(rows)
    return DatasetDict({"train": Dataset.from_list(train[: len(train) // 2], features=features),
                        "validation": Dataset.from_list(train[len(train) // 2:], features=features),
                        "test": Dataset.from_list(test, features=features)})


def squad_v2(chapters):
    features = Features({"id": Value("string"), "title": Value("string"), "context": Value("string"),
                         "question": Value("string"),
                         "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")})})
    rows = []
    for book, chapter, verses in chapters[::3]:
        title = f"{book} {chapter}"
        for first in range(0, len(verses) - 6, 6):
            lines = [f"{first + j + 1} {verses[first + j]}" for j in range(3)]
            context = "\n".join(lines)
            # answerable: the last word of the middle verse, as a span of the background
            target = first + 1
            words = re.findall(r"[A-Za-z]+", verses[target])
            if not words:
                continue
            line_start = context.index(lines[1])
            start = line_start + lines[1].rindex(words[-1])
            rows.append({"id": f"{title}:{target + 1}", "title": title, "context": context,
                         "question": f"What is the last word of verse {target + 1}?",
                         "answers": {"text": [words[-1]], "answer_start": [start]}})
            missing = first + 5  # not in the background
            rows.append({"id": f"{title}:{missing + 1}u", "title": title, "context": context,
                         "question": f"What is the last word of verse {missing + 1}?",
                         "answers": {"text": [], "answer_start": []}})
    # squad_v2's evaluation reads only the validation split (shots are paired within a title)
    return DatasetDict({"train": Dataset.from_list(rows[:8], features=features),
                        "validation": Dataset.from_list(rows, features=features)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heldout", required=True, help="the quickstart's preprocessed data folder (<output>/data)")
    ap.add_argument("--output", required=True, help="folder for the five task folders")
    args = ap.parse_args()
    literature = read_domain("literature")
    entries = devil_entries(literature)
    chapters = bible_chapters(literature)
    tasks = {"trivia_qa": trivia_qa(entries), "natural_questions": natural_questions(chapters),
             "web_questions": web_questions(entries), "lambada": lambada(args.heldout),
             "squad_v2": squad_v2(chapters)}
    for name, dd in tasks.items():
        dd.save_to_disk(os.path.join(args.output, name))
        print(name, {split: len(ds) for split, ds in dd.items()})


if __name__ == "__main__":
    main()
