"""Chinese text (§4.5): the pre-training corpus and the CAIL2019-SCM case-matching triplets.

The corpus joins the registry's ``chinese_corpus`` sources, one document each: a CJRC legal judgement, a
zh-Wikipedia article, a THUCNews article, a FewCLUE unlabelled text, a chapter of a classical novel. A
document goes to validation when crc32 of its text % 100 == 0, else to training. CAIL2019-SCM is a separate
data set and never enters pre-training.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from pathlib import Path

from .registry import resolve

__all__ = ["load_chinese_documents", "load_scm"]

_WIKI_DOC = re.compile(r'<doc id="[^"]*" url="[^"]*" title="[^"]*">\n(.*?)</doc>', re.S)
_CHAPTER = re.compile(r"^\s*第[一二三四五六七八九十百零〇\d]+回", re.M)


def _documents(path: Path) -> list[str]:
    name, text = path.name, path.read_text(encoding="utf-8")
    if name.endswith("_ground_truth.json"):  # CJRC: one judgement per paragraph entry
        return [p["context"] for d in json.loads(text)["data"] for p in d["paragraphs"]]
    if name.startswith("zhwiki"):
        return ["\n".join(line for line in body.split("\n")[1:] if line.strip()) for body in _WIKI_DOC.findall(text)]
    if name.endswith(".tsv"):  # THUCNews: label \t article
        return [line.split("\t", 1)[1] for line in text.splitlines() if "\t" in line]
    if name.endswith("_unlabeled.json"):  # FewCLUE: JSON lines with a sentence or a content field
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r.get("content") or r.get("sentence", "") for r in rows]
    # a classical novel: one document per chapter (回)
    starts = [m.start() for m in _CHAPTER.finditer(text)] or [0]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)], strict=True)]


def load_chinese_documents(mirror: str | Path | None = None, limit: int | None = None) -> dict[str, list[str]]:
    """Training and validation documents of the Chinese pre-training corpus, whitespace-trimmed, empty ones
    dropped. ``limit`` keeps the first ``limit`` training and ``limit // 10`` validation documents of each
    source (smoke runs)."""
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for path in resolve("chinese_corpus", mirror).values():
        mine: dict[str, list[str]] = {"train": [], "validation": []}
        for doc in _documents(Path(path)):
            doc = doc.strip()
            if doc:
                mine["validation" if zlib.crc32(doc.encode()) % 100 == 0 else "train"].append(doc)
        for split, docs in mine.items():
            splits[split] += docs[: (limit if split == "train" else max(1, limit // 10))] if limit else docs
    return splits


def load_scm(mirror: str | Path | None = None) -> dict[str, list[tuple[str, str, str]]]:
    """CAIL2019-SCM (A, B, C) triplets, B the case closer to A; 6:2:2 train / validation / test by row order
    after a shuffle with seed 0 (as the registry states)."""
    path = next(iter(resolve("cail2019_scm", mirror).values()))
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        if not all(isinstance(r.get(k), str) and r[k].strip() for k in "ABC"):
            raise ValueError(f"{path}: line {i + 1} lacks one of the texts A, B, C")
        rows.append((r["A"], r["B"], r["C"]))
    random.Random(0).shuffle(rows)
    a, b = len(rows) * 6 // 10, len(rows) * 8 // 10
    return {"train": rows[:a], "validation": rows[a:b], "test": rows[b:]}
