#!/usr/bin/env python3
"""Builds the small real multi-domain corpus that `doremi quickstart` trains on.

Every domain is assembled from Debian 12 (bookworm) packages whose content is
public domain or under a permissive licence:

    literature  bible-kjv-text (King James Bible, 1611) and dict-devil (Ambrose
                Bierce, "The Devil's Dictionary"): both public domain
    code        libpython3.11-stdlib: Python standard library sources (PSF-2.0)
    licenses    base-files (/usr/share/common-licenses) and ruby-licensee (the
                choosealicense.com licence texts): verbatim licence texts
    docs        python3.11-doc: reStructuredText sources of the Python
                documentation (PSF-2.0)
    math        metamath-databases: set.mm, the Metamath formalisation of
                logic, set theory and mathematics (CC0-1.0)

The packages are fetched with `apt-get download` (exact versions pinned below;
nothing is installed) and unpacked with `dpkg-deb -x` into a temporary folder.
Output, in --out (default examples/data/quickstart next to this script's repo):

    <domain>.jsonl   one {"text": ..., "meta": {"domain": "<domain>"}} per line
    PROVENANCE.md    per domain: packages, versions, .deb SHA-256, files used,
                     licences and the transformation applied

The output depends only on the package contents: inputs are read in sorted
order, the selection is a fixed rule (no randomness), and JSON is written with
fixed key order, so a rerun with the same package versions gives byte-identical
files. Uses the Python standard library only.

Usage:
    python3 scripts/build_quickstart_corpus.py [--out DIR] [--debs DIR]
                                               [--work DIR] [--latest]
  --debs DIR  take the .deb files from DIR (e.g. an earlier --work) instead of
              downloading them
  --latest    download apt's candidate version where the pinned one is gone
              from the archive (the output may then differ; PROVENANCE.md
              records the versions actually used)
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

# Packages and the exact versions the committed corpus was built from.
PACKAGES = {
    "bible-kjv-text": "4.38",
    "dict-devil": "1.0-13.1",
    "libpython3.11-stdlib": "3.11.2-6+deb12u9",
    "base-files": "12.4+deb12u15",
    "ruby-licensee": "9.15.2-4",
    "python3.11-doc": "3.11.2-6+deb12u9",
    "metamath-databases": "0.0.0~20210101.git55fe226-2",
}

DOMAINS = ["literature", "code", "licenses", "docs", "math"]

# Bytes of JSONL per domain at most (the five files stay under 6 MB).
DOMAIN_CAP = 1_150_000
# Longer documents are split at top-level blank-line boundaries.
MAX_DOC_BYTES = 16_000
# Shorter pieces (after cleaning) are dropped.
MIN_DOC_BYTES = 200


# --------------------------------------------------------------- helpers --

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def decode(data: bytes) -> str:
    """UTF-8, or Latin-1 where a file is not valid UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean(text: str) -> str:
    """Normalises a document: NFC, LF line ends, no control characters other
    than tab and newline, no trailing blanks, at most two blank lines in a
    row, no leading or trailing blank lines."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = _CTRL.sub("", text)
    lines = [ln.rstrip() for ln in text.split("\n")]
    out: list[str] = []
    blank = 0
    for ln in lines:
        blank = blank + 1 if not ln else 0
        if blank <= 2:
            out.append(ln)
    return "\n".join(out).strip("\n")


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _pack(pieces: list[str], sep: str, limit: int) -> list[str]:
    chunks: list[str] = []
    cur = ""
    for p in pieces:
        cand = p if not cur else cur + sep + p
        if cur and nbytes(cand) > limit:
            chunks.append(cur)
            cur = p
        else:
            cur = cand
    if cur:
        chunks.append(cur)
    return chunks


def split_long(text: str, limit: int = MAX_DOC_BYTES) -> list[str]:
    """Splits a document longer than `limit` bytes into consecutive pieces of
    at most `limit` bytes: at blank lines followed by an unindented line (a
    top-level definition, a heading, a paragraph), else at any blank line,
    else at line ends."""
    if nbytes(text) <= limit:
        return [text]
    blocks = re.split(r"\n\n+(?=\S)", text)
    if len(blocks) == 1:
        blocks = re.split(r"\n\n+", text)
    if len(blocks) == 1:
        lines = text.split("\n")
        if len(lines) == 1:  # one enormous line: cut at characters
            out, cur = [], ""
            for ch in text:
                if nbytes(cur) >= limit - 4:
                    out.append(cur)
                    cur = ""
                cur += ch
            return out + ([cur] if cur else [])
        return _pack(lines, "\n", limit)
    pieces: list[str] = []
    for b in blocks:
        pieces.extend(split_long(b, limit))
    return _pack(pieces, "\n\n", limit)


class Unit:
    """A selectable source unit (a file, a chapter, a section) and the
    documents it yields."""

    def __init__(self, source: str, text: str):
        self.source = source
        self.docs = [d for d in split_long(clean(text)) if nbytes(d) >= MIN_DOC_BYTES]

    def jsonl(self, domain: str) -> list[str]:
        return [json.dumps({"text": d, "meta": {"domain": domain}}, ensure_ascii=False) + "\n"
                for d in self.docs]


def take_in_order(units: list[Unit], domain: str, cap: int) -> list[Unit]:
    """Units in the given order until the next one would pass the cap."""
    chosen, size = [], 0
    for u in units:
        if not u.docs:
            continue
        b = sum(nbytes(l) for l in u.jsonl(domain))
        if size + b > cap:
            break
        chosen.append(u)
        size += b
    return chosen


def take_spread(units: list[Unit], domain: str, cap: int) -> tuple[list[Unit], int]:
    """m units evenly spaced over the whole source (unit floor(j * n / m) for
    j = 0..m-1, in order), m the largest count whose documents fit the cap."""
    units = [u for u in units if u.docs]
    n = len(units)
    size = [sum(nbytes(l) for l in u.jsonl(domain)) for u in units]
    for m in range(n, 0, -1):
        idx = [j * n // m for j in range(m)]
        if sum(size[i] for i in idx) <= cap:
            return [units[i] for i in idx], n
    return [], n


# ------------------------------------------------------------- packages --

class Packages:
    def __init__(self, work: Path, debs: Path | None, latest: bool):
        self.work = work
        self.debs = debs
        self.latest = latest
        self.info: dict[str, dict] = {}

    def _find_deb(self, folder: Path, pkg: str, version: str | None) -> Path | None:
        found = sorted(folder.glob(f"{pkg}_*.deb"))
        for f in found:
            v = self.deb_field(f, "Version")
            if version is None or v == version:
                return f
        return None

    @staticmethod
    def deb_field(deb: Path, field: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True,
                              capture_output=True, text=True).stdout.strip()

    def fetch(self, pkg: str) -> Path:
        """Unpacks `pkg` (downloading it unless --debs has it) and returns the
        folder it was unpacked into."""
        want = PACKAGES[pkg]
        debdir = self.work / "debs"
        debdir.mkdir(parents=True, exist_ok=True)
        deb = None
        if self.debs is not None:
            deb = self._find_deb(self.debs, pkg, want) or (
                self._find_deb(self.debs, pkg, None) if self.latest else None)
        if deb is None:
            deb = self._find_deb(debdir, pkg, want)
        if deb is None:
            r = subprocess.run(["apt-get", "download", f"{pkg}={want}"], cwd=debdir,
                               capture_output=True, text=True)
            if r.returncode != 0:
                if not self.latest:
                    sys.exit(f"apt-get download {pkg}={want} failed:\n{r.stderr.strip()}\n"
                             "Run `apt-get update` first; if this version is gone from the "
                             "archive, rerun with --latest (PROVENANCE.md will then record "
                             "the version used).")
                log(f"warning: {pkg} {want} not available; taking apt's candidate version")
                r = subprocess.run(["apt-get", "download", pkg], cwd=debdir,
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"apt-get download {pkg} failed:\n{r.stderr.strip()}")
            deb = self._find_deb(debdir, pkg, want) or self._find_deb(debdir, pkg, None)
        assert deb is not None
        root = self.work / "root" / pkg
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        self.info[pkg] = {
            "version": self.deb_field(deb, "Version"),
            "deb": deb.name,
            "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
            "root": root,
        }
        return root


# --------------------------------------------------------------- domains --

# The books of the King James Bible, as abbreviated in bible-kjv-text's data.
KJV_BOOKS = [
    ("Ge", "Genesis"), ("Exo", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"),
    ("Deu", "Deuteronomy"), ("Josh", "Joshua"), ("Jdgs", "Judges"), ("Ruth", "Ruth"),
    ("1Sm", "1 Samuel"), ("2Sm", "2 Samuel"), ("1Ki", "1 Kings"), ("2Ki", "2 Kings"),
    ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"),
    ("Neh", "Nehemiah"), ("Est", "Esther"), ("Job", "Job"), ("Psa", "Psalms"),
    ("Prv", "Proverbs"), ("Eccl", "Ecclesiastes"), ("SSol", "Song of Solomon"),
    ("Isa", "Isaiah"), ("Jer", "Jeremiah"), ("Lam", "Lamentations"), ("Eze", "Ezekiel"),
    ("Dan", "Daniel"), ("Hos", "Hosea"), ("Joel", "Joel"), ("Amos", "Amos"),
    ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"), ("Nahum", "Nahum"),
    ("Hab", "Habakkuk"), ("Zep", "Zephaniah"), ("Hag", "Haggai"), ("Zec", "Zechariah"),
    ("Mal", "Malachi"), ("Mat", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"),
    ("John", "John"), ("Acts", "Acts"), ("Rom", "Romans"), ("1Cor", "1 Corinthians"),
    ("2Cor", "2 Corinthians"), ("Gal", "Galatians"), ("Eph", "Ephesians"),
    ("Phi", "Philippians"), ("Col", "Colossians"), ("1Th", "1 Thessalonians"),
    ("2Th", "2 Thessalonians"), ("1Tim", "1 Timothy"), ("2Tim", "2 Timothy"),
    ("Titus", "Titus"), ("Phmn", "Philemon"), ("Heb", "Hebrews"), ("Jas", "James"),
    ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1Jn", "1 John"), ("2Jn", "2 John"),
    ("3Jn", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
]
# The books taken (narrative, poetry, wisdom, gospel, history: about 0.7 MB).
KJV_SELECTED = ["Genesis", "Ruth", "Esther", "Job", "Ecclesiastes", "Song of Solomon",
                "Jonah", "Luke", "Acts"]


def unlzw(data: bytes, maxbits: int = 16) -> bytes:
    """Decompresses one stream of Unix `compress` (LZW, block mode) codes,
    without the 3-byte header: codes of 9..maxbits bits, LSB first, written
    in groups of eight codes that are padded out when the code width grows or
    a CLEAR (256) resets the table."""
    maxmax = 1 << maxbits
    prefix = [0] * maxmax
    suffix = list(range(256)) + [0] * (maxmax - 256)
    value = int.from_bytes(data, "little")
    total = len(data) * 8
    nbits, maxcode, free = 9, 511, 257
    pos = seg = 0            # bit position; start of the current code width's run
    old, fin = -1, 0
    out = bytearray()

    def pad(pos: int, seg: int, nbits: int) -> int:
        group = nbits * 8
        r = pos - seg
        return seg + (r + group - 1) // group * group

    while True:
        if free > maxcode:
            pos = seg = pad(pos, seg, nbits)
            nbits += 1
            maxcode = maxmax if nbits == maxbits else (1 << nbits) - 1
            continue
        if pos + nbits > total:
            break
        code = (value >> pos) & ((1 << nbits) - 1)
        pos += nbits
        if old == -1:
            if code >= 256:
                raise ValueError("corrupt LZW stream")
            out.append(code)
            old = fin = code
            continue
        if code == 256:
            pos = seg = pad(pos, seg, nbits)
            free, nbits, maxcode = 256, 9, 511
            continue
        incode = code
        stack = bytearray()
        if code >= free:
            if code > free:
                raise ValueError("corrupt LZW stream")
            stack.append(fin)
            code = old
        while code >= 256:
            stack.append(suffix[code])
            code = prefix[code]
        fin = suffix[code]
        stack.append(fin)
        stack.reverse()
        out += stack
        if free < maxmax:
            prefix[free] = old
            suffix[free] = fin
            free += 1
        old = incode
    return bytes(out)


def read_brs_data(path: Path) -> str:
    """Decodes the Bible Retrieval System's "EC02" compressed data file: a
    header (magic, description, window size, window count, window offsets)
    and then LZW-compressed windows of `window size` bytes of text each."""
    d = path.read_bytes()
    if not d.startswith(b"EC02"):
        raise ValueError(f"{path}: not an EC02 compressed data file")
    window, count = struct.unpack(">II", d[0x54:0x5C])
    offsets = struct.unpack(f">{count + 1}I", d[0x5C:0x5C + 4 * (count + 1)])
    text = bytearray()
    for i in range(count):
        w = unlzw(d[offsets[i]:offsets[i + 1]])
        if i < count - 1 and len(w) != window:
            raise ValueError(f"{path}: window {i} decodes to {len(w)} bytes, not {window}")
        text += w
    return text.decode("ascii")


def kjv_units(root: Path) -> tuple[list[Unit], str]:
    text = read_brs_data(root / "usr/lib/bible.data")
    names = dict(KJV_BOOKS)
    verse = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    nverses = 0
    for line in text.split("\n")[1:]:  # line 1 is a title line
        if not line.strip():
            continue
        m = verse.match(line)
        if not m:
            raise ValueError(f"bible.data: unexpected line {line!r}")
        key = (names[m.group(1)], int(m.group(2)))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(f"{m.group(3)} {m.group(4)}")
        nverses += 1
    units = [Unit(f"{b} {c}", f"{b} {c}\n\n" + "\n".join(chapters[(b, c)]))
             for (b, c) in order if b in KJV_SELECTED]
    return units, f"{nverses} verses decoded"


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64num(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def devil_units(root: Path) -> list[Unit]:
    """The preface and the entries of the Devil's Dictionary, one document per
    initial letter (split when long)."""
    body = decode(gzip.decompress((root / "usr/share/dictd/devil.dict.dz").read_bytes()))
    raw = body.encode("utf-8")
    entries = []
    for line in (root / "usr/share/dictd/devil.index").read_text("utf-8").splitlines():
        head, off, ln = line.split("\t")
        entries.append((_b64num(off), _b64num(ln), head))
    entries.sort()
    info = next(e for e in entries if e[2] == "00databaseinfo")
    info_text = raw[info[0]:info[0] + info[1]].decode("utf-8")
    preface = info_text[info_text.index("PREFACE"):]
    units = [Unit("preface", "THE DEVIL'S DICTIONARY\nby Ambrose Bierce\n\n" + preface)]
    groups: dict[str, list[str]] = {}
    end = 0
    for off, ln, head in entries:
        if head.startswith("00database") or off < end:  # metadata; aliases into an entry
            continue
        end = off + ln
        entry = raw[off:end].decode("utf-8").strip("\n")
        letter = entry[:1].upper()
        groups.setdefault(letter, []).append(entry)
    for letter in sorted(groups):
        units.append(Unit(f"entries {letter}", "\n\n".join(groups[letter])))
    return units


def build_literature(pk: Packages) -> dict:
    kjv_root = pk.fetch("bible-kjv-text")
    devil_root = pk.fetch("dict-devil")
    devil = devil_units(devil_root)
    kjv, note = kjv_units(kjv_root)
    chosen = take_in_order(devil + kjv, "literature", DOMAIN_CAP)
    return {
        "units": chosen,
        "sources": [
            {"package": "dict-devil",
             "files": ["usr/share/dictd/devil.dict.dz", "usr/share/dictd/devil.index"],
             "licence": "Public domain (copyright expired). Debian's copyright file: \"The "
                        "Devil's Dictionary is in the public domain, its copyright has "
                        "expired.\" (Ambrose Bierce, 1881-1906; Wiretap edition of the 1911 "
                        "Boni text.)"},
            {"package": "bible-kjv-text",
             "files": ["usr/lib/bible.data"],
             "licence": "Public domain: the King James Version text (1611). Debian's "
                        "copyright file: \"The copyright for the King James Version text of "
                        "the Bible is expired\". (In the United Kingdom the KJV is still "
                        "under the Crown's perpetual letters patent; public domain elsewhere. The "
                        "data file's format, by Chip Chapin, is \"provided for unrestricted "
                        "use\"; only the text is used here.)"},
        ],
        "selection": (
            "The Devil's Dictionary in full: its preface, then its entries grouped by "
            "initial letter. Then the King James Bible, one document per chapter, for the "
            "books " + ", ".join(KJV_SELECTED) + f" ({note} from bible.data in all)."),
        "transformation": (
            "devil.dict.dz is gunzipped (dictzip is gzip) and cut into entries at the "
            "offsets in devil.index (base64 offsets; headword aliases that point into "
            "another entry are skipped); the dictd header and the Internet Wiretap "
            "title page before the preface are dropped. bible.data is decoded in the script "
            "(its \"EC02\" format: 64 KiB windows of Unix-compress LZW, a window offset "
            "table in the header); each chapter becomes \"<Book> <chapter>\", a blank line, "
            "then one verse a line as \"<verse> <text>\"."),
    }


CODE_EXCLUDE = re.compile(r"^(test|pydoc_data|__phello__|site-packages|dist-packages)/|"
                          r"(^|/)_sysconfigdata|(^|/)__pycache__/|^__hello__\.py$")


def build_code(pk: Packages) -> dict:
    root = pk.fetch("libpython3.11-stdlib")
    base = root / "usr/lib/python3.11"
    files = sorted(p for p in base.rglob("*.py")
                   if p.is_file() and not p.is_symlink() and not CODE_EXCLUDE.search(p.relative_to(base).as_posix()))
    units = [Unit(f.relative_to(root).as_posix(), decode(f.read_bytes())) for f in files]
    chosen, k = take_spread(units, "code", DOMAIN_CAP)
    return {
        "units": chosen,
        "sources": [
            {"package": "libpython3.11-stdlib",
             "files": [u.source for u in chosen],
             "licence": "PSF-2.0 (Python Software Foundation License Version 2), with a few "
                        "modules under other permissive licences that Debian's copyright "
                        "file (/usr/share/doc/libpython3.11-stdlib/copyright) lists, e.g. "
                        "multiprocessing/* BSD-3-Clause (R Oudkerk), sqlite3/* zlib "
                        "(Gerhard Häring), logging/* HPND-style (Vinay Sajip), tarfile.py "
                        "MIT (Lars Gustäbel); their notices are kept, as the files are "
                        "copied whole."},
        ],
        "selection": (
            f"{len(chosen)} of the {k} .py files under usr/lib/python3.11 (leaving out "
            "test/, pydoc_data/, __phello__/, __hello__.py, _sysconfigdata* and files under "
            f"{MIN_DOC_BYTES} bytes), evenly spaced in sorted path "
            "order (file floor(j * n / m) for j < m, m as large as the domain cap allows); "
            "one document per file (files over "
            f"{MAX_DOC_BYTES} bytes split at top-level blank lines)."),
        "transformation": "Source kept verbatim apart from the common cleaning (below).",
    }


# choosealicense.com texts already present in base-files' common-licenses.
LICENSEE_SKIP = {"apache-2.0", "cc0-1.0", "gpl-2.0", "gpl-3.0", "lgpl-2.1", "lgpl-3.0", "mpl-2.0"}


def build_licenses(pk: Packages) -> dict:
    base_root = pk.fetch("base-files")
    lic_root = pk.fetch("ruby-licensee")
    units = []
    common = sorted(p for p in (base_root / "usr/share/common-licenses").iterdir()
                    if p.is_file() and not p.is_symlink())  # GPL -> GPL-3 etc.
    for p in common:
        units.append(Unit(p.relative_to(base_root).as_posix(), decode(p.read_bytes())))
    lic_dir = next((lic_root / "usr/share/rubygems-integration/all/gems").glob(
        "licensee-*/vendor/choosealicense.com/_licenses"))
    chosen_lic = []
    for p in sorted(lic_dir.glob("*.txt")):
        if p.stem in LICENSEE_SKIP or p.is_symlink():
            continue
        text = decode(p.read_bytes())
        m = re.match(r"---\n.*?\n---\n", text, re.S)  # YAML front matter
        if m:
            text = text[m.end():]
        units.append(Unit(p.relative_to(lic_root).as_posix(), text))
        chosen_lic.append(p)
    chosen = take_in_order(units, "licenses", DOMAIN_CAP)
    src = {u.source for u in chosen}
    return {
        "units": chosen,
        "sources": [
            {"package": "base-files",
             "files": [p.relative_to(base_root).as_posix() for p in common
                       if p.relative_to(base_root).as_posix() in src],
             "licence": "Each text is the licence document itself, copied verbatim as each "
                        "allows (e.g. GPL/LGPL/GFDL: \"Everyone is permitted to copy and "
                        "distribute verbatim copies of this license document, but changing it "
                        "is not allowed.\"); base-files itself: GPL-2+ per its copyright file, "
                        "which does not cover the licence texts' own terms."},
            {"package": "ruby-licensee",
             "files": [p.relative_to(lic_root).as_posix() for p in chosen_lic
                       if p.relative_to(lic_root).as_posix() in src],
             "licence": "The choosealicense.com licence collection vendored by licensee, "
                        "Expat (MIT) per /usr/share/doc/ruby-licensee/copyright; each licence "
                        "body is the steward's text, reproduced verbatim as each permits."},
        ],
        "selection": (
            "All of /usr/share/common-licenses (sorted; not the symlinks GPL, LGPL, GFDL), then the choosealicense.com texts "
            "(sorted) except those whose SPDX id base-files already has ("
            + ", ".join(sorted(LICENSEE_SKIP)) + "); one document per licence."),
        "transformation": (
            "Licence texts are not changed apart from the common cleaning (below); the YAML "
            "front matter of the choosealicense.com files (title, SPDX id, summary) is "
            "removed, leaving the licence text with its [year]/[fullname] placeholders."),
    }


DOCS_EXCLUDE = re.compile(r"^(whatsnew|distutils|includes)/")


def build_docs(pk: Packages) -> dict:
    root = pk.fetch("python3.11-doc")
    base = root / "usr/share/doc/python3.11/html/_sources"
    files = sorted(p for p in base.rglob("*.rst.txt")
                   if p.is_file() and not p.is_symlink() and not DOCS_EXCLUDE.search(p.relative_to(base).as_posix()))
    units = [Unit(f.relative_to(root).as_posix(), decode(f.read_bytes())) for f in files]
    chosen, k = take_spread(units, "docs", DOMAIN_CAP)
    return {
        "units": chosen,
        "sources": [
            {"package": "python3.11-doc",
             "files": [u.source for u in chosen],
             "licence": "PSF-2.0: \"Python and this documentation is: Copyright © 2001-2023 "
                        "Python Software Foundation\", under the PSF License Version 2 "
                        "(_sources/license.rst.txt, /usr/share/doc/python3.11-doc/copyright); "
                        "code examples in the documentation are also under 0BSD."},
        ],
        "selection": (
            f"{len(chosen)} of the {k} reStructuredText sources (_sources/**/*.rst.txt, "
            "leaving out whatsnew/, distutils/, includes/ and pages under "
            f"{MIN_DOC_BYTES} bytes), evenly spaced in sorted path "
            "order (page floor(j * n / m) for j < m, m as large as the domain cap allows); "
            "one document per page (pages over "
            f"{MAX_DOC_BYTES} bytes split at top-level blank lines)."),
        "transformation": "reST markup kept as written; only the common cleaning (below).",
    }


MM_HEADER = re.compile(r"^\s*(#####|#\*#\*#\*|=-=-=-|-\.-\.-\.)")
MM_STOP = "GUIDES AND MISCELLANEA"


def elide_proofs(mm: str) -> str:
    """Replaces each proof (`$= ... $.`, outside comments) with `$= ? $.`,
    Metamath's notation for an unknown proof."""
    out = []
    i = 0
    n = len(mm)
    while i < n:
        j = mm.find("$", i)
        if j < 0:
            out.append(mm[i:])
            break
        tok = mm[j:j + 2]
        if tok == "$(":
            k = mm.find("$)", j)
            k = n if k < 0 else k + 2
            out.append(mm[i:k])
            i = k
        elif tok == "$=":
            k = mm.find("$.", j)
            k = n if k < 0 else k + 2
            out.append(mm[i:j] + "$= ? $.")
            i = k
        else:
            out.append(mm[i:j + 2])
            i = j + 2
    return "".join(out)


def build_math(pk: Packages) -> dict:
    root = pk.fetch("metamath-databases")
    path = root / "usr/share/metamath/databases/set.mm"
    lines = decode(path.read_bytes()).split("\n")
    # The main body: from the first part ("####" heading; before it the file
    # header: label-change log, how-to, bibliography) up to the part "GUIDES
    # AND MISCELLANEA" (after which come deprecated parts and the mathboxes).
    def heading(i: int) -> bool:  # a "$(" line opening a heading comment
        return lines[i].strip() == "$(" and bool(MM_HEADER.match(lines[i + 1]))
    start = next(i for i in range(len(lines) - 1)
                 if heading(i) and lines[i + 1].lstrip().startswith("#####"))
    stop = next(i for i, ln in enumerate(lines) if ln.strip() == MM_STOP)
    stop = max(i for i in range(stop) if lines[i].strip() == "$(")
    # Split before each chapter/section/subsection heading comment: a "$("
    # line followed by a #*#*, =-=-= or -.-.- rule.
    # A piece under 20 lines (a heading right before another) joins the next.
    cuts = [start]
    for i in range(start + 1, stop):
        if heading(i) and i - cuts[-1] >= 20:
            cuts.append(i)
    cuts.append(stop)
    units = []
    for a, b in zip(cuts, cuts[1:]):
        text = elide_proofs("\n".join(lines[a:b]))
        title = ""
        for ln in lines[a + 2:a + 6]:
            if ln.strip() and not MM_HEADER.match(ln):
                title = ln.strip()
                break
        units.append(Unit(f"set.mm lines {a + 1}-{b}" + (f" ({title})" if title else ""), text))
    chosen, k = take_spread(units, "math", DOMAIN_CAP)
    return {
        "units": chosen,
        "sources": [
            {"package": "metamath-databases",
             "files": ["usr/share/metamath/databases/set.mm"],
             "licence": "CC0-1.0 (\"This work is waived of all rights, including copyright, "
                        "according to the CC0 Public Domain Dedication\"), per set.mm's header "
                        "and /usr/share/doc/metamath-databases/copyright."},
        ],
        "selection": (
            "set.mm's main body (from its first part, \"CLASSICAL FIRST-ORDER LOGIC WITH "
            f"EQUALITY\", up to the part \"{MM_STOP}\": without the file header's "
            "label-change log and bibliography, the deprecated parts and the users' "
            f"mathboxes) cut into {k} pieces at its chapter, section "
            f"and subsection headings (a piece under 20 lines joins the next); {len(chosen)} of them evenly spaced in file order "
            "(piece floor(j * n / m) for j < m, m as large as the domain cap allows); one "
            "document per piece (split when long). Pieces taken: "
            + "; ".join(u.source.replace("set.mm ", "") for u in chosen) + "."),
        "transformation": (
            "Statements and comments kept as written; each proof (`$= ... $.` outside "
            "comments, mostly Metamath's compressed proof strings) is replaced by `$= ? $.`, "
            "Metamath's notation for an unknown proof, so that the domain is theorem "
            "statements, definitions and their English commentary."),
    }


BUILDERS = {"literature": build_literature, "code": build_code, "licenses": build_licenses,
            "docs": build_docs, "math": build_math}


# ------------------------------------------------------------ provenance --

def provenance(results: dict, pk: Packages, stats: dict) -> str:
    L = []
    L.append("# Quickstart corpus: provenance\n")
    L.append("Five domains of real text for `doremi quickstart`, built by "
             "`scripts/build_quickstart_corpus.py` from Debian 12 (bookworm) packages "
             "fetched with `apt-get download` and unpacked with `dpkg-deb -x` (nothing is "
             "installed). This file is written by that script; do not edit it by hand. "
             "The quickstart adds a sixth, synthetic domain of random tokens itself.\n")
    L.append("Format: `<domain>.jsonl`, UTF-8 JSON Lines, one document a line: "
             "`{\"text\": ..., \"meta\": {\"domain\": \"<domain>\"}}` (read with domain key "
             "`meta.domain`). Plain rather than zstd-compressed so that the data can be read "
             "and diffed in the repository (git compresses it in its own storage anyway), "
             "and the files together stay under 6 MB.\n")
    L.append("Rebuild: `python3 scripts/build_quickstart_corpus.py` (needs `apt-get`, "
             "`dpkg-deb` and network access to the Debian archive; run `apt-get update` "
             "first). The output is deterministic: inputs are read in sorted order, the "
             "selection is a fixed rule, there is no randomness, so the same package "
             "versions give byte-identical files (SHA-256 below).\n")
    L.append("| domain | documents | bytes | SHA-256 | sources | licence |")
    L.append("| --- | ---: | ---: | --- | --- | --- |")
    short = {"literature": "public domain", "code": "PSF-2.0 (+ permissive, see below)",
             "licenses": "verbatim licence texts", "docs": "PSF-2.0",
             "math": "CC0-1.0"}
    for d in DOMAINS:
        s = stats[d]
        pkgs = ", ".join(f"`{x['package']}` {pk.info[x['package']]['version']}"
                         for x in results[d]["sources"])
        L.append(f"| {d} | {s['docs']} | {s['bytes']} | `{s['sha256'][:16]}…` | {pkgs} | "
                 f"{short[d]} |")
    total = sum(stats[d]["bytes"] for d in DOMAINS)
    L.append(f"| **total** | {sum(stats[d]['docs'] for d in DOMAINS)} | {total} | | | |\n")
    L.append("Common cleaning, every document: decoded as UTF-8 (Latin-1 where a file is "
             "not valid UTF-8), Unicode NFC, CR/CRLF line ends to LF, control characters "
             "other than tab and newline removed (e.g. the form feeds in licence texts), "
             "trailing blanks removed, at most two blank lines in a row, leading and trailing "
             "blank lines removed. A document over "
             f"{MAX_DOC_BYTES} bytes is split into consecutive pieces of at most that size "
             "at blank lines followed by an unindented line (else at any blank line, else at "
             f"line ends); pieces under {MIN_DOC_BYTES} bytes are dropped. Each domain is "
             f"capped at {DOMAIN_CAP} bytes of JSONL: literature and licenses take their "
             "sources in the order described until the next would pass the cap; code, docs "
             "and math take m sources evenly spaced over the whole package (source "
             "floor(j * n / m) for j < m of n, in order), m as large as the cap allows.\n")
    for d in DOMAINS:
        r = results[d]
        s = stats[d]
        L.append(f"## {d}\n")
        L.append(f"{s['docs']} documents, {s['bytes']} bytes, SHA-256 `{s['sha256']}`.\n")
        for src in r["sources"]:
            info = pk.info[src["package"]]
            L.append(f"- Package `{src['package']}` version `{info['version']}` "
                     f"(`{info['deb']}`, SHA-256 `{info['sha256']}`)")
            L.append(f"  - Licence: {src['licence']}")
            files = src["files"]
            if len(files) <= 3:
                L.append("  - Files: " + ", ".join(f"`/{f}`" for f in files))
            else:
                L.append(f"  - Files ({len(files)}): " + ", ".join(f"`/{f}`" for f in files))
        L.append(f"- Selection: {r['selection']}")
        L.append(f"- Transformation: {r['transformation']}\n")
    return "\n".join(L)


# ------------------------------------------------------------------ main --

def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=repo / "examples/data/quickstart")
    ap.add_argument("--debs", type=Path, default=None,
                    help="folder with the .deb files (skips downloading those found)")
    ap.add_argument("--work", type=Path, default=None,
                    help="work folder (kept); default: a temporary folder, removed")
    ap.add_argument("--latest", action="store_true",
                    help="use apt's candidate version where the pinned one is unavailable")
    args = ap.parse_args()

    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: this script needs a Debian-based system")

    tmp = None
    if args.work is None:
        tmp = tempfile.mkdtemp(prefix="quickstart-corpus-")
        work = Path(tmp)
    else:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        pk = Packages(work, args.debs.resolve() if args.debs else None, args.latest)
        results, stats = {}, {}
        args.out.mkdir(parents=True, exist_ok=True)
        for d in DOMAINS:
            log(f"building {d} ...")
            r = BUILDERS[d](pk)
            lines = [l for u in r["units"] for l in u.jsonl(d)]
            data = "".join(lines).encode("utf-8")
            (args.out / f"{d}.jsonl").write_bytes(data)
            results[d] = r
            stats[d] = {"docs": len(lines), "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()}
        (args.out / "PROVENANCE.md").write_text(provenance(results, pk, stats) + "\n",
                                                encoding="utf-8")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'domain':<12}{'documents':>10}{'bytes':>12}  packages")
    for d in DOMAINS:
        pkgs = ", ".join(f"{x['package']} {pk.info[x['package']]['version']}"
                         for x in results[d]["sources"])
        print(f"{d:<12}{stats[d]['docs']:>10}{stats[d]['bytes']:>12}  {pkgs}")
    print(f"{'total':<12}{sum(s['docs'] for s in stats.values()):>10}"
          f"{sum(s['bytes'] for s in stats.values()):>12}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
