"""Every real data set the project uses, by name: its files, their checksums, where each comes from, and how
it is split.

Lookup order for a file: the mirror directory (``--data-dir`` or ``$ROFORMER_DATA_DIR``; tests and CI use
``../shared/data``), then the download cache (``$ROFORMER_CACHE``, default ``~/.cache/roformer``), then a
download from the file's canonical location, checked against its SHA-256. Without a network a mirror is
enough; a file that is in neither place and has no download location is reported with how to obtain it.

The canonical locations are the source repositories at the pinned commits listed in ``shared/data/
SOURCES.md``; a file that the mirror holds in a derived form is made from its download by a ``transform``
("gunzip", or "zip:MEMBER:START:LENGTH", a byte range of one member of a zip archive: the enwik8 prefix), and
is checked against the SHA-256 of exactly the bytes used; a derived form that no transform can make (a
re-split, joined chapters) has no download location and names its source instead.

Downloads go through ``pooch`` (temporary file, progress bar, cache): an archive is fetched once into the
cache and the files cut from it are verified before they are moved into place, so a corrupt or interrupted
download never leaves a file that is used. What pooch does not do here, and this module does: the lookup in
a mirror first, a checksum of the *derived* bytes (pooch checks the downloaded file, whose hash a prefix of an
archive does not determine), and the errors that name the data set.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgument, MissingFile, UnknownName
from ..io import cache_root, sha256_file, umask_mode
from .checksums import SHA256

__all__ = ["DataFile", "Dataset", "DataUnavailable", "REGISTRY", "get", "data_dir", "resolve", "available"]

ENV_DATA_DIR = "ROFORMER_DATA_DIR"


class DataUnavailable(MissingFile):
    """A data set (or one of its files) is neither in the mirror nor downloadable here."""


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the mirror root, e.g. "tinyshakespeare/input.txt"
    url: str | None = None  # canonical download location of exactly this content (after ``transform``)
    transform: str | None = None  # "gunzip", or "zip:MEMBER:START:LENGTH" (a byte range of a zip member)

    @property
    def sha256(self) -> str | None:
        return SHA256.get(self.path)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    source: str  # where the data comes from, for people
    licence: str
    files: tuple[DataFile, ...]
    splits: str  # how train/validation/test are formed (stated here, implemented by the loader)
    extra: dict = field(default_factory=dict)


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _files(folder: str, names, url=None, transform=None) -> tuple[DataFile, ...]:
    return tuple(DataFile(f"{folder}/{n}", url(n) if url else None, transform) for n in names)


_ENWIK8_ZIP = "http://mattmahoney.net/dc/enwik8.zip"  # the Hutter Prize file; the mirror holds its first 4,154,400 B
_PT_EXAMPLES = ("pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8")
_CUTOFF = "mieseung/Cutoff_with_Attribution"
_FEWCLUE = ("CLUEbenchmark/FewCLUE", "62a02c6f31cf32814cfe522f78ef088228840f8d")
_CAIL = ("china-ai-law-challenge/CAIL2019", "010ebcedb4a1faf0ae25576254d134fa518e4830")
_M30K = ("multi30k/dataset", "a3d2e0d26b56f3846f66a952536ffed4e401d05a")
_M30K_FILES = [f"{s}.{lang}" for s in ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco",
                                      "test_2018_flickr") for lang in ("en", "de")]

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "enwik8",
            "Hutter Prize enwik8 (raw Wikipedia XML bytes); the mirror holds its exact first 4,154,400 bytes",
            "full file: http://mattmahoney.net/dc/enwik8.zip (10^8 bytes); prefix taken from "
            "Mentors4EDU/Break-CS@5aba2368 enwik8",
            "Wikipedia text, CC BY-SA / GFDL",
            (DataFile("enwik8_prefix/enwik8_prefix.part00", _ENWIK8_ZIP, "zip:enwik8:0:2100000"),
             DataFile("enwik8_prefix/enwik8_prefix.part01", _ENWIK8_ZIP, "zip:enwik8:2100000:2054400")),
            "the standard enwik8 split in proportion: first 90% of the bytes train, next 5% validation, "
            "last 5% test",
        ),
        Dataset(
            "tinyshakespeare",
            "Tiny Shakespeare, 1,115,394 characters",
            "karpathy/char-rnn@6f9487a6 data/tinyshakespeare/input.txt",
            "public domain",
            _files("tinyshakespeare", ["input.txt"], lambda n: _github(
                "karpathy/char-rnn", "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e", "data/tinyshakespeare/input.txt")),
            "first 90% of the characters train, last 10% validation (as nanoGPT)",
        ),
        Dataset(
            "wikitext2",
            "WikiText-2 validation and test (tokenized and raw)",
            "pytorch/examples@77f55b91 (tokens); DRAGNLabs/LLMHumanModeling@a76c4773, Tylogi/TyloQuant@7989d038 (raw)",
            "CC BY-SA 3.0",
            (
                DataFile("wikitext2/wiki.valid.tokens",
                         _github(*_PT_EXAMPLES, "word_language_model/data/wikitext-2/valid.txt")),
                DataFile("wikitext2/wiki.test.tokens",
                         _github(*_PT_EXAMPLES, "word_language_model/data/wikitext-2/test.txt")),
                DataFile("wikitext2/wiki.valid.raw", _github(
                    "DRAGNLabs/LLMHumanModeling", "a76c47739e890a857b138b0adc5ca47a10c4c18f", "data/wiki.valid.raw")),
                DataFile("wikitext2/wiki.test.raw",
                         _github("Tylogi/TyloQuant", "7989d038b13ca737da11a95fb90e77ae059f33c0",
                                 "data/wikitext-2-raw/wiki.test.raw")),
            ),
            "validation and test as published; no training split in the mirror",
        ),
        Dataset(
            "enwiki",
            "English Wikipedia sample: WikiExtractor plain text, 13,278 articles, 3.13M words",
            "ZhouYii/PatchedDistro@6433a90c data/AA/wiki_00..39",
            "Wikipedia CC BY-SA 3.0",
            _files("enwiki_2014_extracted", [f"AA_wiki_{i:02d}" for i in range(40)], lambda n: _github(
                "ZhouYii/PatchedDistro", "6433a90cc5a1311a4995e8944c7d6d25fb9bc811", f"data/AA/{n[3:]}")),
            "by article: an article goes to validation when crc32(title) % 100 == 0, to test when == 1, else train",
        ),
        Dataset(
            "multi30k",
            "Multi30k task 1 En-De: 29,000 train / 1,014 val / 1,000 test2016 (and test2017/2018) sentence pairs",
            "multi30k/dataset@a3d2e0d2 data/task1/raw/*.gz",
            "non-commercial research/education (Flickr30k-derived)",
            _files("multi30k", _M30K_FILES, lambda n: _github(*_M30K, f"data/task1/raw/{n}.gz"), "gunzip"),
            "as published: train, val, test_2016_flickr (+ test_2017_flickr, test_2017_mscoco, test_2018_flickr)",
        ),
        Dataset(
            "newstest2014",
            "WMT14 newstest2014 En-De, 3,003 segments (plain text extracted from the SGML)",
            "nyu-mll/jiant@ad60d996 test-full/newstest2014-deen-{src.en,ref.de}.sgm",
            "WMT test sets, research use",
            _files("wmt14_newstest2014_ende", ["newstest2014.en", "newstest2014.de"]),
            "test only",
        ),
        Dataset(
            "sst2",
            "GLUE SST-2 sentiment: train 67,349 as 90% / 10% files, dev 872",
            "forest-snow/alps@3c7ef2c9 data/SST-2/",
            "research use",
            (DataFile("glue/SST-2/dev.tsv", _github("forest-snow/alps", "3c7ef2c98249fc975a897b27f275695f97d5b7a9",
                                                    "data/SST-2/dev.tsv")),
             DataFile("glue/SST-2/train_90pct.tsv"), DataFile("glue/SST-2/train_10pct_heldout.tsv")),
            "train = train_90pct + train_10pct_heldout (the GLUE train set); validation = GLUE dev",
        ),
        Dataset(
            "mrpc",
            "Microsoft Research Paraphrase Corpus: train 4,076, test 1,725 (labelled)",
            f"{_CUTOFF}@a604c9a4 glue_data/MRPC/",
            "MSR Paraphrase Corpus licence (research)",
            _files("glue/MRPC", ["msr_paraphrase_train.txt", "msr_paraphrase_test.txt"], lambda n: _github(
                _CUTOFF, "a604c9a48afd1734ede1ceaa1a405d3b4f37b963", f"glue_data/MRPC/{n}")),
            "GLUE's dev ids are not in the mirror: validation = every 10th training pair (index % 10 == 0), "
            "train = the rest; test = the labelled MSRP test set",
        ),
        Dataset(
            "stsb",
            "STS Benchmark: 5,749 / 1,500 / 1,379 scored sentence pairs",
            f"{_CUTOFF}@b74b32ee glue_data/STS-B/original/",
            "scores CC BY-SA 4.0; texts per source",
            _files("glue/STS-B", ["sts-train.tsv", "sts-dev.tsv", "sts-test.tsv"], lambda n: _github(
                _CUTOFF, "b74b32ee415e1a3c624568f5d42adc4fdcedd952", f"glue_data/STS-B/original/{n}")),
            "as published: train, dev (validation), test (with gold scores)",
        ),
        Dataset(
            "qnli",
            "GLUE QNLI dev, 5,463 pairs (the mirror has no QNLI train)",
            "jonny-vr/LLMCBench@720be179 data/QNLI/dev.tsv",
            "CC BY-SA 4.0",
            (DataFile("glue/QNLI/dev.tsv", _github("jonny-vr/LLMCBench", "720be179c2492271f61d7a09291ffd003f36f47d",
                                                   "data/QNLI/dev.tsv")),),
            "GLUE dev only: train = rows with index % 5 != 0, validation = index % 5 == 0 (80/20)",
        ),
        Dataset(
            "qqp",
            "23,497 labelled QQP pairs, a random subset of GLUE QQP train",
            f"{_CUTOFF}@b74b32ee glue_data/QQP/new_dev.tsv",
            "Quora terms (non-commercial)",
            (DataFile("glue/QQP/qqp_labeled_subset.tsv", _github(
                _CUTOFF, "b74b32ee415e1a3c624568f5d42adc4fdcedd952", "glue_data/QQP/new_dev.tsv")),),
            "train = rows with row number % 10 != 0, validation = row number % 10 == 0 (90/10)",
        ),
        Dataset(
            "mnli",
            "GLUE MNLI (matched and mismatched); not in the mirror",
            "https://dl.fbaipublicfiles.com/glue/data/MNLI.zip",
            "OANC / CC BY-SA 3.0 / per genre",
            (DataFile("glue/MNLI/train.tsv"), DataFile("glue/MNLI/dev_matched.tsv"),
             DataFile("glue/MNLI/dev_mismatched.tsv")),
            "as published: train, dev_matched, dev_mismatched",
        ),
        Dataset(
            "cail2019_scm",
            "CAIL2019-SCM similar case matching: 500 (A, B, C) triplets, B closer to A than C",
            "china-ai-law-challenge/CAIL2019@010ebced scm/baseline/tf_idf/input.txt",
            "CAIL competition data (no licence file)",
            (DataFile("cail2019_scm/scm_sample_input.txt", _github(*_CAIL, "scm/baseline/tf_idf/input.txt")),),
            "by document (roformer.data.chinese.document_partition): no document of a validation or test triplet "
            "is in a training triplet; 171 / 40 / 40 triplets kept, 249 that cross the partition dropped",
        ),
        Dataset(
            "thucnews",
            "THUCNews long-document classification: 1,000 news articles of about 1,000 characters, 10 classes",
            "qianshuang/dl-exp@0ff7afa0 data/cnews/cnews.test.txt (a 1,000-article subset; mirror only)",
            "THUCTC: research use (no licence file)",
            (DataFile("thucnews_cnews_subset/cnews_1000.tsv"),),
            "by article: test when crc32(article) % 10 == 0, validation when == 1, else train",
        ),
        Dataset(
            "chinese_corpus",
            "Chinese text for MLM pre-training: CJRC legal documents, zh-Wikipedia, FewCLUE unlabeled, three "
            "classical novels (CAIL2019-SCM and THUCNews, the fine-tuning tasks, are kept out)",
            "see shared/data/SOURCES.md: cail2019_cjrc, zhwiki_sample, fewclue/unlabeled, zh_classical_novels",
            "per source (CC BY-SA, research use, public domain)",
            (
                DataFile("cail2019_cjrc/dev_ground_truth.json", _github(*_CAIL, "阅读理解/data/dev_ground_truth.json")),
                DataFile("cail2019_cjrc/test_ground_truth.json",
                         _github(*_CAIL, "阅读理解/data/test_ground_truth.json")),
                DataFile("zhwiki_sample/zhwiki_AA_wiki_00.txt", _github(
                    "enix223/nlp-course", "c077f61f6aec451b877daf41a4478d5f77a36698", "data/zhwiki/AA/wiki_00")),
                *(DataFile(f"fewclue/unlabeled/{t}_unlabeled.json",
                           _github(*_FEWCLUE, f"datasets/{t}/unlabeled.json")) for t in ("chid", "eprstmt", "tnews")),
                *_files("zh_classical_novels", ["sanguo_yanyi.txt", "shuihu_zhuan.txt", "xiyou_ji.txt"]),
            ),
            "by document: validation when crc32(document) % 100 == 0, else train",
        ),
    ]
}


def get(name: str) -> Dataset:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownName(f"unknown data set {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def data_dir(explicit: str | Path | None = None) -> Path | None:
    """The mirror directory: the explicit argument, else $ROFORMER_DATA_DIR, else none."""
    value = explicit or os.environ.get(ENV_DATA_DIR)
    return Path(value).expanduser() if value else None


def _cache_dir() -> Path:
    return cache_root() / "data"


_verified: set[tuple[str, float, int]] = set()


def _verify(dataset: Dataset, file: DataFile, path: Path) -> Path:
    if file.sha256 is None:
        return path
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _verified:
        digest = sha256_file(path)
        if digest != file.sha256:
            raise DataUnavailable(
                f"data set {dataset.name!r}: {path} is corrupt or a different version (sha256 {digest[:16]}..., "
                f"expected {file.sha256[:16]}...). Delete it and fetch it again from {file.url or dataset.source}"
            )
        _verified.add(key)
    return path


def _cut(download: Path, transform: str | None, out) -> None:
    """Write the bytes ``transform`` takes from the downloaded file into the open binary file ``out``."""
    if transform is None:
        with open(download, "rb") as f:
            shutil.copyfileobj(f, out)
    elif transform == "gunzip":
        with gzip.open(download, "rb") as f:
            shutil.copyfileobj(f, out)
    elif transform.startswith("zip:"):
        _, member, start, length = transform.split(":")
        with zipfile.ZipFile(download) as archive, archive.open(member) as f:
            remaining = int(start)
            while remaining:  # zip members stream: skip to the start
                remaining -= len(f.read(min(remaining, 1 << 20)))
            out.write(f.read(int(length)))
    else:
        raise InvalidArgument(f"unknown transform {transform!r}")


def _download(dataset: Dataset, file: DataFile, target: Path) -> None:
    """Fetch ``file.url`` into the cache with pooch (once per URL), cut ``file``'s bytes from it, check their
    SHA-256 and size, and only then move them to ``target``."""
    import pooch
    import requests

    downloads = _cache_dir() / "downloads"
    name = hashlib.sha256(file.url.encode()).hexdigest()[:16] + "-" + file.url.rstrip("/").split("/")[-1]
    try:
        downloader = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), timeout=60) \
            if file.url.startswith("http") else None
        fetched = Path(pooch.retrieve(file.url, known_hash=None, fname=name, path=downloads, downloader=downloader))
    except (OSError, requests.RequestException, ValueError) as e:
        raise DataUnavailable(
            f"data set {dataset.name!r}: could not download {file.url} ({e}); put {file.path} under a mirror "
            f"directory (--data-dir or ${ENV_DATA_DIR}) instead"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            _cut(fetched, file.transform, out)
        digest = sha256_file(Path(tmp))
        if file.sha256 and digest != file.sha256:
            fetched.unlink()  # a corrupt or different download: fetch it anew next time
            raise DataUnavailable(
                f"data set {dataset.name!r}: the download from {file.url} does not give {file.path} (sha256 "
                f"{digest[:16]}..., expected {file.sha256[:16]}...); it was deleted, try again or use a mirror")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, target)
    except DataUnavailable:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        fetched.unlink(missing_ok=True)
        raise DataUnavailable(f"data set {dataset.name!r}: the download from {file.url} is damaged ({e}); it was "
                              "deleted, try again") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve(name: str, mirror: str | Path | None = None, download: bool = True) -> dict[str, Path]:
    """Local, checksum-verified paths of every file of data set ``name``, keyed by file path relative to the
    mirror root. Raises :class:`DataUnavailable` naming the data set, the places looked and the source."""
    dataset = get(name)
    root = data_dir(mirror)
    paths = {}
    for file in dataset.files:
        looked = []
        candidates = ([root / file.path] if root else []) + [_cache_dir() / file.path]
        found = next((p for p in candidates if p.is_file()), None)
        looked += [str(p) for p in candidates]
        if found is None and file.url and download:
            found = candidates[-1]
            _download(dataset, file, found)
        if found is None:
            how = f"download {file.url}" if file.url else f"obtain it from {dataset.source}"
            raise DataUnavailable(
                f"data set {name!r}: {file.path} not found (looked in {', '.join(looked) or 'no mirror'}); "
                f"{how} and place it under a mirror directory (--data-dir or ${ENV_DATA_DIR})"
            )
        paths[file.path] = _verify(dataset, file, found)
    return paths


def available(name: str, mirror: str | Path | None = None) -> tuple[bool, str]:
    """(True, "") when every file is present locally, else (False, the reason); never downloads."""
    try:
        resolve(name, mirror, download=False)
        return True, ""
    except DataUnavailable as e:
        return False, str(e)
