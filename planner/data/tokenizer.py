"""The built-in character tokenizer of the default workload: a fixed vocabulary, no downloads.

One token per character of :data:`CHARS`, after four special tokens. ``to_hf`` turns it into a
``PreTrainedTokenizerFast`` that ``AutoTokenizer.from_pretrained`` reads back from a model
directory, so the cached default model is an ordinary Hugging Face model directory.
"""

from __future__ import annotations

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(len(SPECIALS))
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz +-=:,.?>|;()\n"
VOCAB_SIZE = 64  # len(SPECIALS) + len(CHARS) = 55, rounded up to a multiple of 8 (spare ids never emitted)


class CharTokenizer:
    """Characters of :data:`CHARS` to ids and back; unknown characters become ``<unk>``."""

    pad_token_id = PAD
    bos_token_id = BOS
    eos_token_id = EOS
    unk_token_id = UNK
    vocab_size = VOCAB_SIZE

    def __init__(self):
        self.vocab = {tok: i for i, tok in enumerate(SPECIALS)}
        for ch in CHARS:
            self.vocab[ch] = len(self.vocab)
        assert len(self.vocab) <= VOCAB_SIZE
        self.inverse = {i: tok for tok, i in self.vocab.items()}

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.vocab.get(ch, UNK) for ch in text]
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i < len(SPECIALS):
                if not skip_special_tokens:
                    out.append(SPECIALS[i])
                continue
            out.append(self.inverse.get(i, "" if skip_special_tokens else SPECIALS[UNK]))
        return "".join(out)

    def to_hf(self):
        """The same tokenizer as a ``transformers.PreTrainedTokenizerFast`` (prepends ``<bos>``)."""
        # transformers and its tokenizers: deferred until the Hugging Face form is asked for (seconds on top of torch)
        from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import WordLevel
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(WordLevel(dict(self.vocab), unk_token=SPECIALS[UNK]))
        # every character is its own word; whitespace included, so nothing is lost
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.post_processor = processors.TemplateProcessing(
            single=f"{SPECIALS[BOS]} $A", pair=f"{SPECIALS[BOS]} $A $B", special_tokens=[(SPECIALS[BOS], BOS)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token=SPECIALS[PAD],
            bos_token=SPECIALS[BOS],
            eos_token=SPECIALS[EOS],
            unk_token=SPECIALS[UNK],
            padding_side="left",
            clean_up_tokenization_spaces=False,
        )
