"""Tokenizers: train the built-in byte-level BPE tokenizer on the synthetic corpus, and load any
Hugging Face tokenizer offline, ready for left-padded static batches."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tokencarbon.errors import ConfigError

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"


def train_builtin_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> None:
    """Train a byte-level BPE tokenizer on `texts` and save it as a Hugging Face tokenizer directory.

    Like GPT-2's and Llama 3's: a word is preceded by its space ("Ġword"), so a word seen often
    enough in training becomes one token, and any byte sequence still encodes. The tokenizer
    prepends BOS when special tokens are asked for, as Llama's does.
    """
    out_dir = Path(out_dir)
    tok = Tokenizer(models.BPE(unk_token=UNK))
    # add_prefix_space: the first word of a text gets the same token as the word mid-sentence.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory or the local Hugging Face cache (never the network),
    with a pad token (EOS if it has none) and left padding, as static batched generation needs."""
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tokenizer {str(name_or_path)!r}: not a local tokenizer directory nor a model id in the "
            f"Hugging Face cache ({exc}); offline, only those two work"
        ) from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(
                f"tokenizer {str(name_or_path)!r} has neither a pad nor an eos token; "
                "left-padded batches need one of them"
            )
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def max_token_bytes(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest piece of text one token can stand for, in UTF-8 bytes; None where no bound holds.

    This is what lets the workload drop an over-long text without tokenizing it: a token stands
    for a contiguous piece of the (normalized) text no longer than its vocabulary entry, so a text
    of more than max_token_bytes x n UTF-8 bytes has more than n tokens. Entry lengths are taken
    as UTF-8 bytes of the entry as stored, which never undercounts: a byte-level entry ("Ġthe")
    stores one character per byte, a SentencePiece entry ("▁the") its normalized text, a byte
    fallback entry ("<0xE2>") six characters for one byte; added tokens match their own text.

    It holds only where no token can swallow an unbounded run of text, i.e. where no <unk> is ever
    produced: a BPE model whose alphabet covers every byte (a ByteLevel pre-tokenizer, as GPT-2,
    Llama 3, Qwen and the built-in tokenizer have) or with byte_fallback (Llama 2, Mistral).
    WordPiece maps a whole unknown word to [UNK], and Unigram models may too: None for those, and
    for tokenizers without a Rust backend, so callers tokenize everything.
    """
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None

    def has_byte_level(node) -> bool:
        if not node:
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has_byte_level(n) for n in node.get("pretokenizers", []))

    if not (model.get("byte_fallback") or has_byte_level(spec.get("pre_tokenizer"))):
        return None
    entries = list(backend.get_vocab(with_added_tokens=True))
    return max(len(e.encode("utf-8")) for e in entries)


def normalized_bytes(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """UTF-8 length of `text` after the tokenizer's normalizer (what max_token_bytes bounds)."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    if normalizer is not None:
        text = normalizer.normalize_str(text)
    return len(text.encode("utf-8"))
