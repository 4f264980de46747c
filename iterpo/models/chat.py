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


_MARK = "\x00iterpo-turn-end\x00"


def encode_observation(tokenizer, observation: str, role: str = "tool") -> list[int]:
    """Token ids that follow a policy's turn when a tool answers it: the chat template's end of the turn, the tool
    message holding ``observation``, and the start of the policy's next turn. Rendered by the model's own
    template (a template that knows no tool role gets the answer as a user message)."""
    if not tokenizer.chat_template:
        return tokenizer(f"\n{observation}\n", add_special_tokens=False)["input_ids"]
    turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(
            turn + [{"role": role, "content": observation}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # templates that accept only user and assistant turns raise on another role
        if role == "user":
            raise
        return encode_observation(tokenizer, observation, "user")
    return tokenizer(text[text.index(_MARK) + len(_MARK) :], add_special_tokens=False)["input_ids"]
