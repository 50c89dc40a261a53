"""Tokenizing a cut text gives the rows tokenizing the whole text gives (real C4 documents, T5 tokenizer)."""
import gzip
import json

import pytest

from alphadecay.training.data.encode import CHARS_PER_TOKEN, encode_rows, splits_on_whitespace
from conftest import DATA_DIR


@pytest.fixture(scope="module")
def documents():
    paths = sorted((DATA_DIR / "c4" / "en").glob("*.json.gz"))
    if not paths:
        pytest.skip(f"real C4 sample not found under {DATA_DIR} (set ALPHADECAY_DATA_DIR)")
    texts = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


@pytest.fixture(scope="module")
def t5():
    path = DATA_DIR / "tokenizers" / "t5-base"
    if not path.is_dir():
        pytest.skip(f"T5 tokenizer not found under {path} (set ALPHADECAY_DATA_DIR)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("max_length", [16, 256, 1024])
def test_rows_equal_full_tokenization_on_every_document(documents, t5, max_length):
    assert splits_on_whitespace(t5)
    for start in range(0, len(documents), 256):
        texts = documents[start:start + 256]
        ours = encode_rows(t5, texts, max_length)
        full = t5(texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")
        assert (ours["input_ids"] == full["input_ids"]).all() and (ours["attention_mask"] == full["attention_mask"]).all()


def test_a_cut_that_falls_short_is_tokenized_in_full(t5):
    # "international" is one T5 token of 13 characters (14 with its space): cut at 8 characters per token the
    # text no longer fills a 16-token row, so the whole text must be tokenized again.
    text = " ".join(["international"] * 40)
    cut_tokens = len(t5(text[:CHARS_PER_TOKEN * 16]).input_ids)
    assert cut_tokens < 16 <= len(t5(text).input_ids)
    ours = encode_rows(t5, [text, "short"], 16)
    full = t5([text, "short"], max_length=16, truncation=True, padding="max_length", return_tensors="pt")
    assert (ours["input_ids"] == full["input_ids"]).all() and int(ours["attention_mask"][0].sum()) == 16


def test_tokenizers_that_do_not_split_on_whitespace_are_called_plainly():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    assert not splits_on_whitespace(tok)
    rows = encode_rows(tok, ["a b c"], 4)
    assert rows["input_ids"].shape == (1, 4)
