"""Tokenizers, all as HuggingFace ``tokenizers`` objects saved as ``tokenizer.json`` beside the weights, so
a saved model directory is self-contained.

- byte level: one token per byte, id = byte value (character-level LMs on enwik8);
- byte-level BPE (translation, GPT-style LMs) and WordPiece (BERT/RoFormer MLM), trained on a corpus;
- Chinese word level (jieba, WoBERT/RoFormer) and character level, in :class:`ChineseTokenizer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..errors import InvalidArgument, MissingFile
from ..io import read_json, read_text

__all__ = ["byte_tokenizer", "train_bpe", "train_wordpiece", "ChineseTokenizer", "RoFormerTokenizer",
           "save_tokenizer", "load_tokenizer", "check_tokenizer"]

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def byte_tokenizer() -> Tokenizer:
    """256 tokens, one per byte value, with id == byte value; decodes back to the exact bytes (as text)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str] | None = None) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens or [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
    """BERT-style WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4) and [CLS] A [SEP] (B [SEP])."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = _bert_template(tok)
    return tok


def save_tokenizer(tok, directory: str | Path) -> None:
    from ..io import atomic_write, atomic_write_text

    if isinstance(tok, ChineseTokenizer | RoFormerTokenizer):
        tok.save(directory)
        return
    atomic_write(Path(directory) / "tokenizer.json", lambda tmp: tok.save(tmp))
    # and the tokenizer_config.json transformers reads first: without it, AutoTokenizer picks the tokenizer of the
    # model type (RoFormer's needs rjieba) instead of this tokenizer.json; it names the special tokens present
    specials = {name: token for name, token in zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                                                   BERT_SPECIALS, strict=True) if tok.token_to_id(token) is not None}
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", **specials}
    atomic_write_text(Path(directory) / "tokenizer_config.json", json.dumps(settings, indent=2) + "\n")


def save_with_tokenizer(model, tok, directory: str | Path) -> None:
    """A model directory as transformers expects it: the model's weights and config, and its tokenizer beside."""
    model.save_pretrained(directory)
    save_tokenizer(tok, directory)


def _bert_template(tok: Tokenizer) -> processors.TemplateProcessing:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a model directory: :class:`RoFormerTokenizer` for a Chinese RoFormer vocabulary (its
    tokenizer_config.json says RoFormerTokenizer, or its vocab.txt holds Chinese words, as the published
    checkpoints' do); the recipe's character-level :class:`ChineseTokenizer`; ``tokenizer.json``; else, for a
    HuggingFace directory with only a BERT ``vocab.txt``, the equivalent WordPiece tokenizer (lower-cased
    unless ``tokenizer_config.json`` says otherwise)."""

    directory = Path(directory)
    path, vocab, settings = directory / "tokenizer.json", directory / "vocab.txt", directory / "tokenizer_config.json"
    config = read_json(settings, expect=dict) if settings.is_file() else {}
    if config.get("roformer_tokenizer") == "char":
        return ChineseTokenizer.load(directory)
    if vocab.is_file() and (config.get("tokenizer_class") == "RoFormerTokenizer" or "roformer_tokenizer" in config
                            or RoFormerTokenizer.is_word_vocabulary(_read_vocab(vocab))):
        return RoFormerTokenizer.load(directory)
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise InvalidArgument(f"{path} is not a readable tokenizer ({e}); it may be truncated: save or download "
                                  "it again") from None
    if vocab.is_file():
        lowercase = read_json(settings, expect=dict).get("do_lower_case", True) if settings.is_file() else True
        tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.post_processor = _bert_template(tok)
        return tok
    raise MissingFile(f"no tokenizer.json (or vocab.txt) in {directory}: save the tokenizer beside the model")


def check_tokenizer(tok: Tokenizer, vocab_size: int, pad_token_id: int | None, where: str | Path,
                    required: tuple[str, ...] = ()) -> None:
    """Raise a clear error when a tokenizer cannot drive a model: ids beyond the model's embedding table, a
    different padding id, or a special token the task needs that the vocabulary lacks."""
    if tok.get_vocab_size() > vocab_size:
        raise InvalidArgument(f"{where}: the tokenizer has {tok.get_vocab_size()} tokens but the model's vocabulary "
                              f"only {vocab_size}; they do not belong together")
    pad = tok.token_to_id("[PAD]")
    if pad is not None and pad_token_id is not None and pad != pad_token_id:
        raise InvalidArgument(f"{where}: the tokenizer pads with id {pad} but the model with {pad_token_id}")
    missing = [t for t in required if tok.token_to_id(t) is None]
    if missing:
        raise InvalidArgument(f"{where}: the tokenizer has no {', '.join(missing)}")


class EncodedIds:
    """The part of a ``tokenizers`` Encoding the recipes read."""

    def __init__(self, ids: list[int]):
        self.ids = ids


def _bert_word_pieces(vocab: dict[str, int], lowercase: bool = True) -> Tokenizer:
    """BERT's basic tokenisation (clean, lower-case and strip accents, split punctuation and every CJK character)
    and WordPiece over ``vocab``, through ``tokenizers``: what BertTokenizer.tokenize does."""
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def _jieba_words(text: str) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba.lcut(text, HMM=False)


class _Vocabulary:
    """Token <-> id lookups over ``self.vocab`` (a list) and ``self.ids`` (its inverse), as tokenizers names them."""

    vocab: list[str]
    ids: dict[str, int]

    def get_vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int | None:
        return self.ids.get(token)

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]


class RoFormerTokenizer(_Vocabulary):
    """The tokenisation of the published Chinese RoFormer checkpoints (``RoFormerTokenizer``'s documented
    algorithm): lower-case, segment with jieba (HMM off); a word found in the vocabulary is one token, any other
    word goes through BERT's basic tokenisation and WordPiece. Its vocabulary (a BERT ``vocab.txt``) holds
    characters, words and WordPieces together. ``今天天气非常好。`` -> 今 天 天 气 非常 好 。 on a vocabulary with
    非常 but not 今天 or 天气.

    ``encode`` adds [CLS] ... [SEP] (``add_special_tokens=False``: not); it answers the calls the recipes make
    of a ``tokenizers.Tokenizer`` (``encode``, ``encode_batch``, ``token_to_id``, ``id_to_token``,
    ``get_vocab_size``, ``decode``).
    """

    def __init__(self, vocab: list[str], lowercase: bool = True):
        self.vocab, self.lowercase = vocab, lowercase
        self.ids = {t: i for i, t in enumerate(vocab)}
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in self.ids]
        if missing:
            raise InvalidArgument(f"the vocabulary has no {', '.join(missing)}")
        self._pieces = _bert_word_pieces(self.ids, lowercase)
        self._specials = re.compile("(" + "|".join(re.escape(t) for t in BERT_SPECIALS if t in self.ids) + ")")

    def tokenize(self, text: str) -> list[str]:
        tokens = []
        for part in self._specials.split(text):  # [MASK] and the other specials are never split
            if part in self.ids and part in BERT_SPECIALS:
                tokens.append(part)
                continue
            for word in _jieba_words(part.lower() if self.lowercase else part):
                if word in self.ids:
                    tokens.append(word)
                else:
                    tokens.extend(self._pieces.encode(word, add_special_tokens=False).tokens)
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> EncodedIds:
        ids = [self.ids[t] for t in self.tokenize(text)]
        if add_special_tokens:
            ids = [self.ids["[CLS]"], *ids, self.ids["[SEP]"]]
        return EncodedIds(ids)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[EncodedIds]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids: list[int]) -> str:
        out = ""
        for i in ids:
            token = self.vocab[i]
            if token.startswith("[") and token.endswith("]"):
                continue
            out += token[2:] if token.startswith("##") else token
        return out

    @staticmethod
    def is_word_vocabulary(vocab: list[str]) -> bool:
        """A vocab.txt in the published checkpoints' format: it has multi-character Chinese words."""
        return any(len(t) > 1 and not t.startswith("##") and all("\u4e00" <= ch <= "\u9fff" for ch in t)
                   for t in vocab)

    def save(self, directory: str | Path) -> None:
        from ..io import atomic_write_text

        directory = Path(directory)
        atomic_write_text(directory / "vocab.txt", "".join(t + "\n" for t in self.vocab))
        config = {"tokenizer_class": "RoFormerTokenizer", "do_lower_case": self.lowercase}
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> RoFormerTokenizer:
        directory = Path(directory)
        settings = directory / "tokenizer_config.json"
        lowercase = read_json(settings, expect=dict).get("do_lower_case", True) if settings.is_file() else True
        return cls(_read_vocab(directory / "vocab.txt"), lowercase)


def _read_vocab(path: Path) -> list[str]:
    text = read_text(path)
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


class ChineseTokenizer(_Vocabulary):
    """The Chinese recipe's tokenizers (§4.5), with their vocabulary builder: word level (``word_level``, WoBERT /
    RoFormer) tokenises exactly as :class:`RoFormerTokenizer` (jieba words found in a vocabulary of the most
    frequent words plus the characters; other words through BERT's basic tokenisation and WordPiece, which for
    Chinese means characters), and saves a directory that :class:`RoFormerTokenizer` reads back to the same ids;
    character level (``word_level=False``) is one token per character, the BERT-Chinese baseline. Text is
    lower-cased. Specials [PAD] [UNK] [CLS] [SEP] [MASK] have ids 0-4.

    It answers the same calls as a ``tokenizers.Tokenizer`` where the recipes use them (``encode_batch``,
    ``token_to_id``, ``id_to_token``, ``get_vocab_size``, ``decode``) and saves as ``vocab.txt`` plus
    ``tokenizer_config.json``, which :func:`load_tokenizer` recognises.
    """

    def __init__(self, vocab: list[str], word_level: bool = True):
        if vocab[: len(BERT_SPECIALS)] != BERT_SPECIALS:
            raise InvalidArgument(f"the vocabulary must start with {BERT_SPECIALS}")
        self.vocab, self.word_level = vocab, word_level
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.unk = self.ids["[UNK]"]
        self._roformer = RoFormerTokenizer(vocab) if word_level else None

    @staticmethod
    def _words(text: str, word_level: bool) -> list[str]:
        text = text.lower()
        if not word_level:
            return [ch for ch in text if not ch.isspace()]
        return [w for w in _jieba_words(text) if w.strip()]

    def tokenize(self, text: str) -> list[str]:
        if self.word_level:  # exactly the published checkpoints' RoFormerTokenizer, over this vocabulary
            return self._roformer.tokenize(text)
        return [ch if ch in self.ids else "[UNK]" for ch in self._words(text, False)]

    def encode_ids(self, text: str) -> list[int]:
        return [self.ids.get(t, self.unk) for t in self.tokenize(text)]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[EncodedIds]:
        if add_special_tokens:
            raise InvalidArgument("ChineseTokenizer adds no special tokens itself; the recipes place [CLS] / [SEP]")
        return [EncodedIds(self.encode_ids(t)) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i >= len(BERT_SPECIALS))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, word_level: bool = True) -> ChineseTokenizer:
        """Every character seen, then (word level) the most frequent multi-character words, up to ``vocab_size``
        tokens; characters are kept first so that any unknown word can fall back to them. The character level
        keeps the ``vocab_size`` most frequent characters."""
        from collections import Counter

        words: Counter[str] = Counter()
        chars: Counter[str] = Counter()
        for text in texts:
            for w in cls._words(text, word_level):
                words[w] += 1
                chars.update(w)
        room = vocab_size - len(BERT_SPECIALS)
        ordered_chars = [c for c, _ in chars.most_common() if not c.isspace()]
        if not word_level:
            return cls(BERT_SPECIALS + ordered_chars[:room], word_level=False)
        ordered_chars = ordered_chars[: room // 2]  # rare characters beyond half the room become [UNK]
        kept = set(ordered_chars)
        multi = [w for w, _ in words.most_common() if len(w) > 1 and w not in kept]
        return cls(BERT_SPECIALS + ordered_chars + multi[: room - len(ordered_chars)], word_level=True)

    def save(self, directory: str | Path) -> None:
        from ..io import atomic_write_text

        directory = Path(directory)
        atomic_write_text(directory / "vocab.txt", "".join(t + "\n" for t in self.vocab))
        config = {"roformer_tokenizer": "jieba-word" if self.word_level else "char", "jieba_hmm": False,
                  "do_lower_case": True, **({"tokenizer_class": "RoFormerTokenizer"} if self.word_level else {})}
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ChineseTokenizer:
        directory = Path(directory)
        config = read_json(directory / "tokenizer_config.json", expect=dict)
        return cls(_read_vocab(directory / "vocab.txt"), word_level=config["roformer_tokenizer"] == "jieba-word")
