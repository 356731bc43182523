"""Trains a small word-piece (BPE) tokenizer with T5's special tokens on report text.

No pretrained tokenizer can be downloaded in offline settings (and the demo's tiny T5 wants a tiny
vocabulary), so demos and tests build one from their own reports. Real training uses t5-small's tokenizer.

BPE rather than T5's Unigram: on a few hundred distinct report words the `tokenizers` Unigram trainer stops at
a character-heavy vocabulary (3.5 tokens per word on the phantom reports, whatever vocab_size asks), while BPE
learns whole words (1.0 token per word) and gives the same vocabulary on every run and in every process.
"""

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# T5's special-token ids: pad 0 (also the decoder start token), eos 1, unk 2.
T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


def train_report_tokenizer(texts, vocab_size=1000):
    """Returns a fast tokenizer with T5's conventions (pad=0, eos=1 appended to every sequence, unk=2)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\n", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=T5_SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )
