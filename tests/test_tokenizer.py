"""The built-in BPE tokenizer: trained on the synthetic corpus, saved, reloaded like any HF tokenizer."""

from pathlib import Path

import pytest

from tokencarbon.errors import ConfigError
from tokencarbon.tokenizer import load_tokenizer, train_builtin_tokenizer
from tokencarbon.synthetic import synthetic_conversations, synthetic_vocabulary


def corpus(n: int = 200, seed: int = 1) -> list[str]:
    return [t["value"] for c in synthetic_conversations(n, seed) for t in c["conversations"]]


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "builtin"
    train_builtin_tokenizer(corpus(), 8000, out)
    return out


def test_saved_as_a_tokenizer_directory_without_leftovers(builtin_dir):
    assert (builtin_dir / "tokenizer.json").is_file()
    assert (builtin_dir / "tokenizer_config.json").is_file()
    assert not builtin_dir.with_name("builtin.tmp").exists()


def test_words_of_the_corpus_are_one_token_each(builtin_dir):
    tok = load_tokenizer(str(builtin_dir))
    words, _ = synthetic_vocabulary()
    # The 10 most frequent pseudo-words each appear thousands of times in the ~200k-word corpus, so
    # BPE has merged each "Ġword" into one token: 10 words, 10 tokens.
    text = " ".join(words[:10])
    assert len(tok(text, add_special_tokens=False).input_ids) == 10
    # With special tokens the template prepends BOS: 10 + 1.
    ids = tok(text).input_ids
    assert len(ids) == 11 and ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == text


def test_unseen_letters_fall_back_to_bytes(builtin_dir):
    tok = load_tokenizer(str(builtin_dir))
    # "zzzq": z and q never occur in the synthetic alphabet, so no merge applies: the prefix space
    # "Ġ" and the four letters stay single bytes, 1 + 4 = 5 tokens.
    assert tok.tokenize("zzzq") == ["Ġ", "z", "z", "z", "q"]


def test_special_tokens_and_left_padding(builtin_dir):
    tok = load_tokenizer(str(builtin_dir))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
        "<|unk|>",
    )
    assert tok.padding_side == "left"
    words, _ = synthetic_vocabulary()
    batch = tok([" ".join(words[:3]), words[0]], add_special_tokens=False, padding=True)
    # Row 2 has 1 token against row 1's 3: two pads, on the left.
    assert batch["attention_mask"][1] == [0, 0, 1]
    assert batch["input_ids"][1][:2] == [tok.pad_token_id] * 2


def test_retraining_replaces_the_directory(tmp_path):
    out = tmp_path / "tok"
    train_builtin_tokenizer(corpus(20, seed=2), 300, out)
    # 256 byte tokens + 4 specials + the first 40 merges: the trainer stops at vocab_size.
    assert len(load_tokenizer(str(out))) == 300
    train_builtin_tokenizer(corpus(20, seed=2), 8000, out)
    # The second run has room for a token per corpus word, far beyond 300.
    assert len(load_tokenizer(str(out))) > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_pad_falls_back_to_eos(builtin_dir, tmp_path):
    tok = load_tokenizer(str(builtin_dir))
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    reloaded = load_tokenizer(str(tmp_path / "nopad"))
    assert reloaded.pad_token == "<|eos|>"


def test_no_pad_and_no_eos_is_an_error(builtin_dir, tmp_path):
    tok = load_tokenizer(str(builtin_dir))
    tok.pad_token = None
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "bare")
    with pytest.raises(ConfigError, match="neither a pad nor an eos token") as err:
        load_tokenizer(str(tmp_path / "bare"))
    assert "bare" in str(err.value)


@pytest.mark.parametrize("name", ["/no/such/tokenizer/dir", "no-such-org/no-such-model"])
def test_missing_tokenizer_names_it_and_says_what_works_offline(name):
    with pytest.raises(ConfigError) as err:
        load_tokenizer(name)
    msg = str(err.value)
    assert repr(name) in msg
    assert "local tokenizer directory" in msg and "Hugging Face cache" in msg
