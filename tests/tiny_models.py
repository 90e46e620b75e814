"""Tiny reward models built offline: random weights from a fixed seed, tokenizers trained here."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I sort a list of strings in Python?",
    "Use sorted(items, key=len) to sort by length.",
    "I can't help with that request, but here is a safer option.",
    "Translate to French: where is the train station?",
    "Summaries keep the main points and drop the details.",
    "user assistant system: conversation turn response answer question",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" _",
]

DECODER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
)
ENCODER_TEMPLATE = "[CLS]{% for m in messages %} {{ m['role'] }}: {{ m['content'] }} [SEP]{% endfor %}"


def decoder_tokenizer(*, pad: bool = True, template: bool = True, padding_side: str = "right"):
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    # Like Llama's tokenizers: add_special_tokens=True prepends BOS.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>" if pad else None, padding_side=padding_side, model_max_length=256,
    )
    if template:
        fast.chat_template = DECODER_TEMPLATE
    return fast


def encoder_tokenizer(*, padding_side: str = "right", template: bool = True):
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]", padding_side=padding_side, model_max_length=128,
    )
    if template:
        fast.chat_template = ENCODER_TEMPLATE
    return fast


def save_decoder(path: Path, *, num_labels: int = 1, pad: bool = True, template: bool = True,
                 padding_side: str = "right", seed: int = 0) -> Path:
    tokenizer = decoder_tokenizer(pad=pad, template=template, padding_side=padding_side)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_encoder(path: Path, *, padding_side: str = "right", template: bool = True, seed: int = 0,
                 head: bool = True) -> Path:
    tokenizer = encoder_tokenizer(padding_side=padding_side, template=template)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForSequenceClassification(config) if head else BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
