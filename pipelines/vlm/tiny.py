"""A tiny random-weight VLM (LLaVA: CLIP vision tower + Llama text model, 67k parameters,
300 KB on disk) for tests, the demo and smoke runs of the annotation pipeline, where no real
model can be downloaded. Its answers are meaningless; everything around them is real.

A byte-level BPE tokenizer is trained here in well under a second; the processor has a small
chat template, so `transformers serve` and the in-process backend both accept it. LLaVA rather
than Qwen2-VL: for the Qwen model types `transformers serve` runs answers through its Qwen
response parser (reasoning, tool calls) instead of returning the decoded text. Each image
becomes `TINY_IMAGE_TOKENS` placeholder tokens, so a test can check from the reported prompt
token count that every image reached the model.
"""
from __future__ import annotations

import os
from pathlib import Path

TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
# (32 / 8)^2 patches; the CLS token is dropped by the "default" feature selection strategy.
TINY_IMAGE_TOKENS = (TINY_IMAGE_SIZE // TINY_PATCH) ** 2
IMAGE_TOKEN = "<image>"
END_TOKEN = "<|end|>"

# Roles are spelled out as plain text so the template needs no extra special tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}" + END_TOKEN + "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "the red ball rolls to the left and stops behind the blue box",
    "a small green star spins in the middle of the frame",
    "the person in the yellow shirt walks towards the camera",
    "describe the highlighted object in one sentence",
    "<|system|> <|user|> <|assistant|> object scene video frame mask",
]


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, END_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def save_tiny_vlm(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a complete, loadable tiny LLaVA (weights, tokenizer, processor, chat template) to `path`."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token=END_TOKEN,
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=TINY_PATCH,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
