#!/usr/bin/env python3
"""Reference ids from HuggingFace `tokenizers` for the C++ BpeTokenizer tests.

Usage: tokenizer_reference.py SHARED_DIR OUT_DIR
       tokenizer_reference.py --classes

--classes prints {"cps": [...], "classes": "0312..."}: how HF's ByteLevel
pre-tokenizer classes each code point in the GPT-2 split pattern (0 other,
1 \p{L}, 2 \p{N}, 3 \s) for the whole BMP, every third code point of planes
1-3 and the tag / variation-selector block.


Writes tokenizer variants into OUT_DIR (original files are only read) and
prints one JSON object on stdout:

  {"texts": [...],
   "tokenizers": [{"name", "path", "vocab_size", "ids": [[...] per text]}]}

`path` is what the C++ side loads (a tokenizer.json or a folder). Variants:
  neox           the GPT-NeoX-20B tokenizer.json as shipped (string merges)
  neox_pairs     the same with merges written as ["a", "b"] pairs
  neox_prefix    pre_tokenizer.add_prefix_space = true
  neox_noregex   pre_tokenizer.use_regex = false
  neox_flags     extra added tokens with lstrip/rstrip, single_word and a
                 normalized token whose content changes under NFC
  gpt2           GPT-2's vocab.json + merges.txt folder (HF: BPE.from_file,
                 ByteLevel without prefix space, <|endoftext|> special)
  gpt2_json      that tokenizer saved as tokenizer.json by `tokenizers`
"""
import json
import os
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def texts():
    t = [
        "",
        "Hello world",
        "Hello, world! How are you today?",
        " leading space",
        "trailing space ",
        "trailing spaces   ",
        "  two leading spaces",
        "a  b   c    d     e",
        "x" + " " * 30 + "y",
        "tabs\tand\t\ttabs",
        "new\nline",
        "\n\n\n",
        "para one.\n\n\npara two.\n",
        " \t ",
        " \t x",
        "\r\n windows \r\n",
        "   ",
        " ",
        "\t",
        # contractions
        "I'm sure it's what they've said: we'll, you'd, they're, don't",
        "IT'S LOUD, HE'LL GO, WE'VE, I'D, YOU'RE",
        "'s 't 're 've 'm 'll 'd",
        "'S 'T 'RE 'VE 'M 'LL 'D",
        "rock'n'roll ''s '''t",
        "it’s curly",
        # digits and numbers
        "1234567890",
        "3.14159265358979323846264338327950288419716939937510",
        "Call 555-0123 or +1 (800) 123-4567 before 2024-12-31.",
        "x1y2z3 a12b 100,000,000 1e-9 0x1F",
        "٣٤٥ ١٢٣ ৫৬৭ ४५६ ⅣⅫ ½ ¾ ²³",
        # Latin with accents, NFC
        "Café naïve résumé façade Ærøskøbing Łódź Ångström",
        "Cafe\u0301 nai\u0308ve re\u0301sume\u0301",  # combining marks -> NFC composes
        "\u212b \u00c5 A\u030a",  # Angstrom sign, precomposed, decomposed
        "e\u0301\u0301 o\u0323\u0302 \u1e69 s\u0323\u0307 s\u0307\u0323",  # reordering and multiple marks
        "\u0301 starts with a mark",
        "ﬁ ligature ① circled ｆｕｌｌ width",  # compatibility forms: untouched by NFC
        # other scripts
        "Привет, мир! Съешь же ещё этих мягких французских булок.",
        "Γειά σου Κόσμε· ΑΒΓΔ αβγδ ά έ ή",
        "你好，世界！我们今天去公园散步。",
        "日本語のテキスト、カタカナとひらがな。",
        "한국어 텍스트 \u1100\u1161\u11a8 조합",  # Hangul jamo compose under NFC
        "مرحبا بالعالم، هذا نص عربي.",
        "नमस्ते दुनिया, यह हिंदी पाठ है।",
        "שלום עולם",
        "ภาษาไทย ไม่มีช่องว่าง",
        # emoji
        "I love 🍕 and 🎉!",
        "👍🏽 👋🏿 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
        "🇫🇷🇩🇪🇯🇵",
        "emoji🙂inside🙃words",
        # special tokens inside text
        "<|endoftext|>",
        "first doc<|endoftext|>second doc",
        "end <|endoftext|> start",
        "<|endoftext|><|endoftext|>",
        "a<|endoftext|>  <|endoftext|>\n<|endoftext|>b",
        "<|endoftext| > not special <|endoftext",
        "<|padding|>pad",
        # single_word / lstrip / rstrip / normalized tokens (neox_flags)
        "say hello world, hello.",
        "helloworld hellohello xhello hello1",
        "a <|mask|> b   <|mask|>c<|mask|>   d",
        "ÅngstrÅm and A\u030angstr\u212bm",
        # code
        "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))\n",
        "int main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v[0] != 1;\n}\n",
        "if (a && b || !c) { x += y; } else { x -= 0.5e-3; }",
        "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
        "SELECT * FROM t WHERE id='42' AND name LIKE '%x%';",
        # whitespace oddities
        "nbsp\u00a0here and\u2003em space\u3000ideographic",
        "line\u2028sep para\u2029sep nel\u0085x",
        "zero\u200bwidth joiner\u200dnon\u200cjoiner",
        "\x00\x01\x1f control \x7f chars",
        "ends with newline\n",
        "mixed \t\n \u00a0 \u3000 end",
        # punctuation runs
        "!!!??? ... --- *** ((( ))) «quotes» „Anführung“",
        "https://example.com/path?q=1&r=2#frag",
        "email@example.com, @user #hashtag $100 50% ^_^",
        # long words
        "Pneumonoultramicroscopicsilicovolcanoconiosis Donaudampfschifffahrtsgesellschaftskapitän",
        "a" * 300,
        "ab" * 200 + " " + "🙂" * 50,
    ]
    # A few KB of mixed real text: licence text, then multilingual lines.
    with open(os.path.join(REPO, "examples", "data", "licenses.txt"), encoding="utf-8") as f:
        lic = f.read()
    t.append(lic[:4000])
    t.append(lic[20000:26000])
    multi = "\n".join(x for x in t if any(ord(c) > 127 for c in x)) + "\n" + lic[50000:52000]
    t.append(multi)
    return t


def write_json(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def classes():
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    cps = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    cps += list(range(0x10000, 0x32400, 3)) + list(range(0xE0000, 0xE01F0))
    out = []
    for cp in cps:
        c = chr(cp)
        if len(bl.pre_tokenize_str("a" + c)) == 1:  # joins a letter run
            out.append("1")
        elif len(bl.pre_tokenize_str("1" + c)) == 1:  # joins a number run
            out.append("2")
        elif len(bl.pre_tokenize_str("!" + c)) == 1:  # joins a [^\s\p{L}\p{N}] run
            out.append("0")
        else:
            out.append("3")
    json.dump({"cps": cps, "classes": "".join(out)}, sys.stdout)
    sys.stdout.write("\n")


def main():
    if sys.argv[1:] == ["--classes"]:
        return classes()
    shared, out = sys.argv[1], sys.argv[2]
    neox_path = os.path.join(shared, "fixtures", "tokenizers", "gpt-neox-20b", "tokenizer.json")
    gpt2_dir = os.path.join(shared, "fixtures", "tokenizers", "gpt2")
    with open(neox_path, encoding="utf-8") as f:
        neox = json.load(f)

    variants = [("neox", neox_path, Tokenizer.from_file(neox_path))]

    def variant(name, obj):
        path = os.path.join(out, name, "tokenizer.json")
        write_json(obj, path)
        variants.append((name, path, Tokenizer.from_file(path)))

    pairs = json.loads(json.dumps(neox))
    pairs["model"]["merges"] = [m.split(" ", 1) for m in neox["model"]["merges"]]
    variant("neox_pairs", pairs)

    prefix = json.loads(json.dumps(neox))
    prefix["pre_tokenizer"]["add_prefix_space"] = True
    variant("neox_prefix", prefix)

    noregex = json.loads(json.dumps(neox))
    noregex["pre_tokenizer"]["use_regex"] = False
    variant("neox_noregex", noregex)

    flags = json.loads(json.dumps(neox))
    extra = [
        dict(content="<|mask|>", special=True, lstrip=True, rstrip=True, single_word=False, normalized=False),
        dict(content="hello", special=False, lstrip=False, rstrip=False, single_word=True, normalized=True),
        dict(content="\u212b", special=False, lstrip=False, rstrip=False, single_word=False, normalized=True),
    ]
    next_id = 1 + max(t["id"] for t in flags["added_tokens"])
    for i, e in enumerate(extra):
        flags["added_tokens"].append(dict(id=next_id + i, **e))
    variant("neox_flags", flags)

    gpt2 = Tokenizer(models.BPE.from_file(os.path.join(gpt2_dir, "vocab.json"), os.path.join(gpt2_dir, "merges.txt")))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    variants.append(("gpt2", gpt2_dir, gpt2))
    gpt2_json = os.path.join(out, "gpt2_json", "tokenizer.json")
    os.makedirs(os.path.dirname(gpt2_json), exist_ok=True)
    gpt2.save(gpt2_json)
    variants.append(("gpt2_json", gpt2_json, Tokenizer.from_file(gpt2_json)))

    ts = texts()
    result = {"texts": ts, "tokenizers": []}
    for name, path, tok in variants:
        ids = [tok.encode(t).ids for t in ts]
        result["tokenizers"].append(
            {"name": name, "path": path, "vocab_size": tok.get_vocab_size(with_added_tokens=True), "ids": ids}
        )
    json.dump(result, sys.stdout, ensure_ascii=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
