"""Turning chat messages into prompt token ids with the model's own chat template."""

from __future__ import annotations


def encode_prompt(tokenizer, messages: list[dict], system_prompt: str | None = None) -> list[int]:
    """Token ids of the prompt, ending where the assistant's reply starts."""
    if system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + list(messages)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # a base model without a template: plain text, one message per line
        text = "\n".join(m["content"] for m in messages) + "\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]
