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


# Like zephyr's: no BOS in the template (the tokenizer adds it), every turn closed by EOS, and a
# generation prompt that opens the assistant's turn.
CAUSAL_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def save_causal_lm(path: Path, *, seed: int = 0, padding_side: str = "right", template: str | None = CAUSAL_TEMPLATE,
                   max_length: int = 1024, extra_tokens: tuple[str, ...] = (), lowercase: bool = False) -> Path:
    """A tiny Llama causal LM; the same tokenizer for every seed unless ``extra_tokens`` (another
    vocabulary) or ``lowercase`` (the same vocabulary, other ids for mixed-case text) say otherwise."""
    from tokenizers import normalizers
    from transformers import LlamaForCausalLM

    tokenizer = decoder_tokenizer(padding_side=padding_side, template=False)
    tokenizer.model_max_length = max_length
    if template is not None:
        tokenizer.chat_template = template
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    if lowercase:
        tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # Random init leaves logits near uniform; larger output weights give rewards with real spread.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_long_decoder(path: Path, *, max_length: int = 4096, **options) -> Path:
    """save_decoder's model with room for whole RMB texts: the same weights (rotary positions have
    no learned table), with the position and tokenizer limits raised to ``max_length``."""
    import json

    save_decoder(path, **options)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        settings = json.loads((path / name).read_text(encoding="utf-8"))
        settings[key] = max_length
        (path / name).write_text(json.dumps(settings), encoding="utf-8")
    return path
