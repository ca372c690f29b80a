"""RoFormerTokenizer's documented algorithm (jieba words in the vocabulary as one token, the rest through BERT's
basic tokenisation and WordPiece) against a reference built here from jieba and transformers.BertTokenizer."""

import jieba
import pytest

from roformer.data.tokenizer import RoFormerTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

# a vocabulary in the published checkpoints' format: specials, characters, Chinese words and English WordPieces
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "。", "，", "!", ",", ".", "的", "了"]
         + list("今天气非常好中国北京大学人生活在上海我们爱学习年月日")
         + ["非常", "中国", "北京", "北京大学", "我们", "学习", "生活", "上海"]
         + ["hello", "world", "ro", "##former", "##s", "2019", "3", "5", "un", "##aff", "##able"])
TEXTS = ["今天天气非常好。", "我们在北京大学学习，生活在上海！", "RoFormer 2019年3月5日 Hello, World.",
         "unaffable ROFORMERS 中国人", "Café 的 naïve 了", "  空格\t和\n换行  ", "[MASK]非常好", "🙂 emoji 中国"]


def reference(text, vocab_file):
    """The algorithm as documented, from jieba and transformers' BertTokenizer (basic + WordPiece)."""
    bert = transformers.BertTokenizer(vocab_file, do_lower_case=True)
    vocab = set(VOCAB)
    tokens = []
    for word in jieba.lcut(text.lower(), HMM=False):
        tokens.extend([word] if word in vocab else bert.tokenize(word))
    return tokens


@pytest.fixture
def vocab_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    return tmp_path


def test_the_docstring_example(vocab_dir):
    tok = load_tokenizer(vocab_dir)  # a plain vocab.txt with Chinese words: picked by its content
    assert isinstance(tok, RoFormerTokenizer)
    assert tok.tokenize("今天天气非常好。") == ["今", "天", "天", "气", "非常", "好", "。"]


@pytest.mark.parametrize("text", TEXTS)
def test_equals_jieba_plus_bert_tokenizer(vocab_dir, text):
    tok = RoFormerTokenizer.load(vocab_dir)
    expected = [t for t in reference(text, str(vocab_dir / "vocab.txt")) if t != "[mask]"]
    if text.startswith("[MASK]"):  # specials are never split (BertTokenizer keeps them whole too)
        expected = ["[MASK]", *reference(text[len("[MASK]"):], str(vocab_dir / "vocab.txt"))]
    assert tok.tokenize(text) == expected
    ids = tok.encode(text).ids
    assert ids[0] == VOCAB.index("[CLS]") and ids[-1] == VOCAB.index("[SEP]")
    assert ids[1:-1] == [VOCAB.index(t) for t in expected]


def test_saved_directory_reads_back(tmp_path, vocab_dir):
    tok = RoFormerTokenizer.load(vocab_dir)
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert isinstance(again, RoFormerTokenizer) and all(again.encode(t).ids == tok.encode(t).ids for t in TEXTS)
    assert again.decode(tok.encode("我们在北京大学学习").ids) == "我们在北京大学学习"
