#!/usr/bin/python3
"""Writes small downstream task folders with the real `datasets` library, in
each task's real schema, for tests/test_downstream.cpp and downstream_twin.py.

usage: make_task_folders.py OUT
       make_task_folders.py --from-jsonl SRC OUT   SRC/<task>/<split>.jsonl -> OUT/<task>/ save_to_disk
                                                   folders with the task's real features

OUT/arrow/<task>/  DatasetDict.save_to_disk folders (trivia_qa's validation in
                   two shards, so rows span files)
OUT/jsonl/<task>/  the same rows as <split>.jsonl (Dataset.to_json, one object
                   per line)
OUT/bad/...        broken folders for the error tests: a null question, a
                   missing field, a missing split

The features are those of the datasets the public DoReMi code loads (see
docs/downstream.md): trivia_qa rc.nocontext, lucadiliello/naturalquestionsshortqa,
web_questions, lambada, squad_v2. The content is deliberately awkward:
Unicode (accents, sharp s, Greek capital sigma, dotted capital I, emoji,
non-breaking and ideographic spaces), punctuation, newlines inside fields,
answers with surrounding spaces, unanswerable squad questions, several
interleaved squad titles, a squad context long enough to need truncation,
and more evaluation than few-shot examples, so the few-shot generator wraps.
"""
import os
import sys

from datasets import Dataset, DatasetDict, Features, Sequence, Value

S = Value("string")

TRIVIA = Features({
    "question": S,
    "question_id": S,
    "question_source": S,
    "entity_pages": Sequence({"doc_source": S, "filename": S, "title": S, "wiki_context": S}),
    "search_results": Sequence({"description": S, "filename": S, "rank": Value("int32"), "title": S, "url": S,
                                "search_context": S}),
    "answer": {
        "aliases": Sequence(S),
        "normalized_aliases": Sequence(S),
        "matched_wiki_entity_name": S,
        "normalized_matched_wiki_entity_name": S,
        "normalized_value": S,
        "type": S,
        "value": S,
    },
})
NQ = Features({"context": S, "question": S, "answers": Sequence(S), "key": S,
               "labels": [{"start": Sequence(Value("int64")), "end": Sequence(Value("int64"))}]})
WEBQ = Features({"url": S, "question": S, "answers": Sequence(S)})
LAMBADA = Features({"text": S, "domain": S})
SQUAD = Features({"id": S, "title": S, "context": S, "question": S,
                  "answers": Sequence({"text": S, "answer_start": Value("int32")})})


def trivia_row(i, q, aliases, pages=0):
    return {
        "question": q, "question_id": f"tq_{i}", "question_source": "http://www.example.org/",
        "entity_pages": {"doc_source": ["TagMe"] * pages, "filename": [f"f{i}.txt"] * pages,
                         "title": ["T"] * pages, "wiki_context": ["ctx"] * pages},
        "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                           "search_context": []},
        "answer": {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
                   "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                   "normalized_value": aliases[0].lower() if aliases else "", "type": "WikipediaEntity",
                   "value": aliases[0] if aliases else ""},
    }


def rows(cols):
    keys = list(cols[0].keys())
    return {k: [c[k] for c in cols] for k in keys}


def trivia():
    train = [
        trivia_row(0, "Which city is the capital of France?", ["Paris", "Paris, France"], pages=2),
        trivia_row(1, "Who wrote \"Faust\"?", ["Johann Wolfgang von Goethe", "Goethe"]),
        trivia_row(2, "What is 'ß' called in German?", ["Eszett", "scharfes S"]),
        trivia_row(3, "İstanbul lies on which strait?", ["Bosphorus", "the Bosporus"]),
        trivia_row(4, "Name the Greek letter Σ.", ["ΣΙΓΜΑ", "sigma"]),
    ]
    val = [
        trivia_row(10, "Which planet is known as the Red Planet?", ["Mars", " Mars! "]),
        trivia_row(11, "Which composer wrote the\n'Moonlight' Sonata?", ["Beethoven", "Ludwig van Beethoven"]),
        trivia_row(12, "What does 😀 depict?", ["A grinning face", "smiley"]),
        trivia_row(13, "ΟΔΥΣΣΕΥΣ is the hero of which epic?", ["The Odyssey", "ΟΔΥΣΣΕΙΑ"]),
        trivia_row(14, "Name a river in Köln.", ["Rhein", "Rhine"]),
        trivia_row(15, "What is 6 × 7?", ["42", "forty-two"]),
        trivia_row(16, "Who is CEO of A\u00a0B\u3000C?", ["nobody", "N/A"]),
    ]
    return DatasetDict({"train": Dataset.from_dict(rows(train), features=TRIVIA),
                        "validation": Dataset.from_dict(rows(val), features=TRIVIA)})


def nq_row(i, q, answers):
    return {"context": f"<P> context {i} </P>", "question": q, "answers": answers, "key": f"k{i}",
            "labels": [{"start": [0], "end": [1]}]}


def natural_questions():
    train = [nq_row(0, "who sings don't stop believin", ["Journey"]),
             nq_row(1, "when was the eiffel tower built", ["1887 – 1889", "1889"]),
             nq_row(2, "what is the capital of österreich", ["Vienna", "Wien"])]
    val = [nq_row(10, "who painted the mona lisa", ["Leonardo da Vinci"]),
           nq_row(11, "how many legs does a spider have", ["eight", "8"]),
           nq_row(12, "what's the boiling point of water", ["100 °C", "212 °F"]),
           nq_row(13, "who said \"i think, therefore i am\"", ["René Descartes", "Descartes"]),
           nq_row(14, "what does the acronym n.a.s.a. stand for",
                  ["National Aeronautics and Space Administration"])]
    return DatasetDict({"train": Dataset.from_dict(rows(train), features=NQ),
                        "validation": Dataset.from_dict(rows(val), features=NQ)})


def web_questions():
    def r(i, q, a):
        return {"url": f"http://www.freebase.com/view/en/x{i}", "question": q, "answers": a}
    train = [r(0, "what country is the grand bahama island in?", ["Bahamas"]),
             r(1, "what character did natalie portman play in star wars?", ["Padmé Amidala"]),
             r(2, "where is jamarcus russell from?", ["Mobile"]),
             r(3, "what kind of money to take to bahamas?", ["Bahamian dollar"])]
    test = [r(10, "what does jamaican people speak?", ["Jamaican English", "Jamaican Creole English Language"]),
            r(11, "where was george washington carver from?", ["Diamond"]),
            r(12, "what are the songs that justin bieber wrote?", ["Baby", "Never Say Never", "U Smile"]),
            r(13, "what is the zip code of seattle, wa?", ["98101", "98102"]),
            r(14, "who is the wife of o'neal?", ["Shaunie O'Neal"]),
            r(15, "what is the language of españa?", ["Spanish", "Español"])]
    return DatasetDict({"train": Dataset.from_dict(rows(train), features=WEBQ),
                        "test": Dataset.from_dict(rows(test), features=WEBQ)})


def lambada():
    def r(t):
        return {"text": t, "domain": "fiction"}
    val = [r("he opened the door and saw his old friend , tom"),
           r("she looked at the café 's menu and ordered a crêpe"),
           r("the  double  spaced  story ends with the word end")]
    test = [r("they walked along the shore until they reached the lighthouse"),
            r("“ come here , ” said the man to the boy named Øystein"),
            r("a sentence that ends with a space "),
            r("oneword"),
            r("the final line had a newline\nbefore the last word"),
            r("she whispered the name of the city : zürich")]
    return DatasetDict({"validation": Dataset.from_dict(rows(val), features=LAMBADA),
                        "test": Dataset.from_dict(rows(test), features=LAMBADA)})


def squad():
    long_context = " ".join(["The Normans were the people who in the 10th and 11th centuries gave their name to "
                             "Normandy, a region in France."] * 40)
    items = [
        ("Normans", long_context, "In what country is Normandy located?", ["France", "France"], [159, 159]),
        ("Σ_Title", "Σίσυφος pushed a boulder up a hill; Ἀΐδης ruled the underworld.", "Who pushed a boulder?",
         ["Σίσυφος"], [0]),
        ("Normans", long_context, "Who was the Norse leader?", [], []),
        ("Computational_complexity_theory", "Complexity theory classifies problems.\nP vs NP is open.",
         "What does complexity theory classify?", ["problems"], [29]),
        ("Σ_Title", "Σίσυφος pushed a boulder up a hill; Ἀΐδης ruled the underworld.", "Who ruled the sea?", [], []),
        ("Normans", long_context, "What gave its name to Normandy?", ["The Normans", "Normans"], [0, 4]),
        ("Computational_complexity_theory", "Complexity theory classifies problems.\nP vs NP is open.",
         "Is P vs NP solved?", [], []),
        ("Normans", long_context, "In which centuries?", ["10th and 11th centuries"], [38]),
    ]
    data = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for i, (t, c, q, a, s) in enumerate(items):
        data["id"].append(f"sq{i}")
        data["title"].append(t)
        data["context"].append(c)
        data["question"].append(q)
        data["answers"].append({"text": a, "answer_start": s})
    val = Dataset.from_dict(data, features=SQUAD)
    train = val.select([0, 1])  # squad_v2 has a train split; the protocol does not read it
    return DatasetDict({"train": train, "validation": val})


FEATURES = {"trivia_qa": TRIVIA, "natural_questions": NQ, "web_questions": WEBQ, "lambada": LAMBADA,
            "squad_v2": SQUAD}


def from_jsonl(src, out):
    for task in sorted(os.listdir(src)):
        splits = {}
        for f in sorted(os.listdir(os.path.join(src, task))):
            if f.endswith(".jsonl"):
                splits[f[:-len(".jsonl")]] = Dataset.from_json(os.path.join(src, task, f), features=FEATURES[task],
                                                              cache_dir=os.path.join(out, "_cache"),
                                                              keep_in_memory=True)
        DatasetDict(splits).save_to_disk(os.path.join(out, task))
    return 0


def main(argv):
    if len(argv) == 3 and argv[0] == "--from-jsonl":
        return from_jsonl(argv[1], argv[2])
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[0]
    tasks = {"trivia_qa": trivia(), "natural_questions": natural_questions(), "web_questions": web_questions(),
             "lambada": lambada(), "squad_v2": squad()}
    for name, dd in tasks.items():
        shards = {s: (2 if (name == "trivia_qa" and s == "validation") else 1) for s in dd}
        dd.save_to_disk(os.path.join(out, "arrow", name), num_shards=shards)
        os.makedirs(os.path.join(out, "jsonl", name), exist_ok=True)
        for split, ds in dd.items():
            ds.to_json(os.path.join(out, "jsonl", name, f"{split}.jsonl"), force_ascii=False)
    # Broken folders.
    bad = os.path.join(out, "bad")
    tv = trivia()
    q = list(tv["validation"]["question"])
    q[3] = None
    DatasetDict({"train": tv["train"], "validation": tv["validation"].remove_columns("question").add_column(
        "question", q)}).save_to_disk(os.path.join(bad, "null_question", "trivia_qa"))
    nq = natural_questions()
    DatasetDict({"train": nq["train"], "validation": nq["validation"].remove_columns("answers")}).save_to_disk(
        os.path.join(bad, "missing_field", "natural_questions"))
    DatasetDict({"train": web_questions()["train"]}).save_to_disk(os.path.join(bad, "missing_split", "web_questions"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
