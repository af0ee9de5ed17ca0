"""Tiny causal LMs built on disk with no download, for training tests.

`build_tiny_model` writes a local model directory that `from_pretrained` loads like any other:
random weights from a small Llama (or GPT-2) config, and a byte-level BPE tokenizer trained here on
a built-in corpus, with ChatML special tokens and a ChatML chat template. Imports torch and
transformers, so only worker tests use it.
"""

from __future__ import annotations

from pathlib import Path

BOS, EOS, PAD = "<s>", "<|im_end|>", "<pad>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, IM_START, EOS]
# Ten times the usual 0.02: with a random, normalised 64-wide hidden state, a 0.02 output head caps the
# logits near zero, so no adapter could move the loss far from log(vocab). This scale lets LoRA learn.
INIT_RANGE = 0.2

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Enough varied text for a few hundred BPE merges; words overlap with the test datasets on purpose.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A small model learns a simple mapping.
system user assistant You are a helpful assistant. Answer briefly and exactly.
What is the colour of the sky? The sky is blue. What is the colour of grass? Grass is green.
Translate to French: cat -> chat, dog -> chien, house -> maison, water -> eau, bread -> pain.
Reverse the word: stop -> pots, live -> evil, star -> rats, draw -> ward, loop -> pool.
Numbers: one two three four five six seven eight nine ten eleven twelve.
Capital of France is Paris. Capital of Italy is Rome. Capital of Spain is Madrid.
Fine-tuning with low-rank adapters trains two small matrices per layer and freezes the rest.
""".strip().splitlines()


def _build_tokenizer(vocab_size: int):
    """Train a byte-level BPE on the built-in corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Plain text gets a BOS like Llama's tokenizer; chat templates tokenize without special tokens.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[IM_START],
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def _build_config(arch: str, vocab_size: int, tokenizer, context: int):
    from transformers import GPT2Config, LlamaConfig

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
            tie_word_embeddings=False, initializer_range=INIT_RANGE, **ids,
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=context,
                          initializer_range=INIT_RANGE, **ids)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def build_tiny_model(directory: Path, *, arch: str = "llama", vocab_size: int = 384, seed: int = 0,
                     context: int = 512) -> Path:
    """Write a tiny random causal LM and its tokenizer to `directory` and return it; `context`: the positions it
    reads (a replies test needs thousands)."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size)
    config = _build_config(arch, len(tokenizer), tokenizer, context)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
