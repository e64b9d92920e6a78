"""Tiny ``transformers`` models for tests, built from a config with random weights and saved to
a directory: no download. A byte-level BPE tokenizer is trained on a few sentences in
memory (``tokenizers``) and saved beside the model, with a small chat template.

With ``train_steps``, the model is first fitted for a few steps to those sentences (each ended
by the end-of-text token), so that what it generates looks like them: words, the multi-byte
characters of the third sentence split over byte tokens, and an end of text after a sentence
(a fraction of a second on one CPU thread)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CORPUS = [
    "The worker restarts its tier when the device fails, and the stream goes on.",
    "A supervisor decides: resume, restart, stop or escalate. Tokens flow through channels.",
    "Unicode too: caf\u00e9, na\u00efve, \u4e2d\u6587, \U0001f600 and more text for the tokenizer.",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(
    directory: Path, corpus: Sequence[str] = CORPUS, chat_template: str | None = CHAT_TEMPLATE
) -> Any:
    """A byte-level BPE tokenizer of 320 tokens (``<|endoftext|>`` the end of text and the
    padding) trained on ``corpus``, with ``chat_template``, saved to ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_model(directory: Path, family: str = "gpt2", seed: int = 0, train_steps: int = 0) -> Path:
    """A tiny model of ``family`` (``"gpt2"`` or ``"llama"``) with random weights (fitted to
    ``CORPUS`` for ``train_steps`` steps of Adam), and its tokenizer, saved to ``directory``:
    its path."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(directory)
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=256,
                            bos_token_id=eos, eos_token_id=eos)  # fmt: skip
        model = GPT2LMHeadModel(config)
    elif family == "llama":
        config = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             hidden_size=32, intermediate_size=64, vocab_size=vocab,
                             max_position_embeddings=256, bos_token_id=eos,
                             eos_token_id=eos)  # fmt: skip
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"family must be 'gpt2' or 'llama', got {family!r}")
    if train_steps:
        _fit(model, tokenizer, train_steps)
    model.save_pretrained(directory)
    return directory


def _fit(model: Any, tokenizer: Any, steps: int) -> None:
    """``steps`` steps of Adam on the corpus, as one sequence (one thread: PyTorch's default
    threads spin against each other on a loaded machine, and take a hundred times longer)."""
    import torch

    ids: list[int] = []
    for sentence in CORPUS:
        ids += [*tokenizer.encode(sentence), tokenizer.eos_token_id]
    inputs = torch.tensor([ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            model(input_ids=inputs, labels=inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
    finally:
        torch.set_num_threads(threads)
