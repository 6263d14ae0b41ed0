#!/usr/bin/env python3
"""Checks that every ```cpp block of a Markdown file is an excerpt of a file
under the examples folder, so the README's API snippets are code that CI
compiles and runs.

    check_readme_snippets.py README.md examples/

A snippet matches a file when its lines, with leading and trailing
whitespace removed and blank lines skipped, appear as consecutive lines of
the file (compared the same way). A line `// ...` in a snippet stands for
lines left out: the parts around it must appear in that order in one file.
Exit status 1 names each snippet that matches no file and its first part
found nowhere; a file without any ```cpp block fails too (nothing checked).
Standard library only.
"""
import pathlib
import sys

ELISION = "// ..."
SOURCE_SUFFIXES = {".cpp", ".cu", ".hpp", ".h", ".cuh"}


def normalised(lines):
    return [line.strip() for line in lines if line.strip()]


def cpp_blocks(markdown):
    """(line number of the opening fence, lines) of each ```cpp block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = line.strip()
        if current is None and fence == "```cpp":
            current, start = [], number
        elif current is not None and fence.startswith("```"):
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    if current is not None:
        sys.exit(f"unterminated ```cpp block opened at line {start}")
    return blocks


def parts(snippet_lines):
    """The snippet's normalised lines, cut at `// ...` lines."""
    out, part = [], []
    for line in normalised(snippet_lines):
        if line == ELISION:
            if part:
                out.append(part)
            part = []
        else:
            part.append(line)
    if part:
        out.append(part)
    return out


def find(part, lines, start):
    """Index just past the first occurrence of `part` in lines[start:], or -1."""
    n = len(part)
    for i in range(start, len(lines) - n + 1):
        if lines[i:i + n] == part:
            return i + n
    return -1


def longest_prefix(part, lines):
    """How many leading lines of `part` appear consecutively somewhere in lines."""
    best = 0
    for i in range(len(lines)):
        n = 0
        while n < len(part) and i + n < len(lines) and lines[i + n] == part[n]:
            n += 1
        best = max(best, n)
    return best


def matches(snippet_parts, lines):
    """(True, None), or (False, the first part not found in order)."""
    pos = 0
    for part in snippet_parts:
        pos = find(part, lines, pos)
        if pos < 0:
            return False, part
    return True, None


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: {argv[0]} README.md EXAMPLES_DIR")
    readme, examples = pathlib.Path(argv[1]), pathlib.Path(argv[2])
    sources = {p: normalised(p.read_text(encoding="utf-8").splitlines())
               for p in sorted(examples.rglob("*")) if p.suffix in SOURCE_SUFFIXES}
    if not sources:
        sys.exit(f"no C++ or CUDA sources under {examples}")
    blocks = cpp_blocks(readme.read_text(encoding="utf-8"))
    if not blocks:
        sys.exit(f"{readme}: no ```cpp block to check")
    failures = 0
    for start, lines in blocks:
        snippet_parts = parts(lines)
        if not snippet_parts:
            print(f"{readme}:{start}: empty ```cpp block")
            failures += 1
            continue
        best = None  # the file that matches furthest, for the message
        for path, source in sources.items():
            ok, missing = matches(snippet_parts, source)
            if ok:
                print(f"{readme}:{start}: an excerpt of {path}")
                break
            index = snippet_parts.index(missing)
            score = (index, longest_prefix(missing, source))
            if best is None or score > best[0]:
                best = (score, path, missing)
        else:
            (index, matched), path, missing = best
            where = (f"its line {missing[matched]!r} differs" if matched < len(missing)
                     else "it comes before the previous part there")
            print(f"{readme}:{start}: not found under {examples}: part {index + 1} of the ```cpp block "
                  f"(parts are cut at '{ELISION}') is in no file in that order; closest {path}, where "
                  f"{where}")
            failures += 1
    print(f"{len(blocks) - failures} of {len(blocks)} ```cpp blocks are excerpts of the examples")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
