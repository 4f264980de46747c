"""A tabular policy: C contexts, each a softmax over the same N responses, as a causal language model.

The loop trains language models; to check it against the closed forms of
``iterpo.games`` it must run the same stages on a policy whose updates can be
computed exactly. This one is a transformers model, so it goes through every
stage unchanged (sampling, scoring, packed training, saving and loading):

- the vocabulary is ``<pad> <eos> c0 .. c{C-1} y0 .. y{N-1}``; a prompt is one
  context token ``c{k}`` and a response one response token ``y{i}`` then ``<eos>``;
- the next token depends only on the current one (a bigram model): the logits
  after token t are column t of the output layer's weight, so the trainable
  table ``theta[k, i] = W[y_i, c_k]`` is the policy's logits in context k,
  pi(y_i | c_k) = softmax(theta[k])[i];
- every other entry of W is MASKED, far enough below zero that its probability
  is exactly 0 in float32 and float64, so nothing but the table moves under
  training (the gradient of a masked logit is its probability, 0), and
  log pi(<eos> | y_i) is exactly 0: a response's sequence log-prob is its
  table entry's log-softmax.

Write one with ``write_tabular_policy(path, logits)``; ``table(model)`` reads the
(C, N) logits back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

MASKED = -1.0e4  # exp(-1e4) underflows to 0 in float32 and float64
PAD, EOS = 0, 1


class TabularConfig(PretrainedConfig):
    model_type = "iterpo_tabular"

    def __init__(self, contexts: int = 1, responses: int = 2, **kwargs):
        self.contexts, self.responses = contexts, responses
        kwargs.setdefault("pad_token_id", PAD)
        kwargs.setdefault("eos_token_id", EOS)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return 2 + self.contexts + self.responses


def context_token(k: int) -> int:
    return 2 + k


def response_token(config: TabularConfig, i: int) -> int:
    return 2 + config.contexts + i


class _OneHot(torch.nn.Module):
    """The 'decoder': each position's hidden state is its token as a one-hot vector, (R, L) -> (R, L, V) (exact in
    any dtype: the output layer casts it to its own)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, **kwargs):
        hidden = torch.nn.functional.one_hot(input_ids, self.vocab).float()
        return BaseModelOutputWithPast(last_hidden_state=hidden)


class _NoCache:
    """Generation's cache: a bigram model needs none, but the decoding loop forks and prunes one."""

    def batch_repeat_interleave(self, repeats: int) -> None:
        pass

    def batch_select_indices(self, indices) -> None:
        pass


class TabularPolicy(PreTrainedModel):
    config_class = TabularConfig
    base_model_prefix = "model"
    _no_split_modules: list[str] = []

    def __init__(self, config: TabularConfig):
        super().__init__(config)
        V = config.vocab_size
        self.model = _OneHot(V)
        self.lm_head = torch.nn.Linear(V, V, bias=False)  # weight (V_next, V_current)
        self.post_init()

    def _init_weights(self, module):
        if module is self.lm_head:
            with torch.no_grad():
                module.weight.copy_(
                    _initial_weight(self.config, np.zeros((self.config.contexts, self.config.responses)))
                )

    def get_decoder(self):
        return self.model

    def get_output_embeddings(self):
        return self.lm_head

    def new_cache(self) -> _NoCache:
        return _NoCache()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        hidden = self.model(input_ids).last_hidden_state  # (R, L, V)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype))  # (R, L', V)
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)


AutoConfig.register(TabularConfig.model_type, TabularConfig)
AutoModelForCausalLM.register(TabularConfig, TabularPolicy)


def _initial_weight(config: TabularConfig, logits: np.ndarray) -> torch.Tensor:
    """The output layer's weight holding the (C, N) table, every other entry MASKED but <eos> after a response
    (and after the special tokens, so every column is a distribution)."""
    V, C, N = config.vocab_size, config.contexts, config.responses
    W = torch.full((V, V), MASKED, dtype=torch.float64)
    for k in range(C):
        W[2 + C : 2 + C + N, context_token(k)] = torch.as_tensor(logits[k], dtype=torch.float64)
    for t in [PAD, EOS, *range(2 + C, V)]:
        W[EOS, t] = 0.0
    return W


def table(model) -> np.ndarray:
    """The policy's (C, N) logits, as float64."""
    config = model.config
    W = model.get_output_embeddings().weight.detach().to(torch.float64).cpu().numpy()
    C, N = config.contexts, config.responses
    return W[2 + C : 2 + C + N, 2 : 2 + C].T.copy()


def write_tabular_policy(path: str | Path, logits, dtype: str = "float64") -> Path:
    """A model directory (weights, config, tokenizer with its chat template) of the tabular policy with these
    (C, N) (or (N,): one context) logits. Prompts are 'c0' .. 'c{C-1}', responses 'y0' .. 'y{N-1}'."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    logits = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    if logits.ndim != 2 or logits.shape[1] < 2 or not np.all(np.isfinite(logits)):
        raise ValueError(
            f"logits must be a finite (contexts, responses) array with at least 2 responses, got {logits.shape}"
        )
    C, N = logits.shape
    path = Path(path)
    config = TabularConfig(contexts=C, responses=N, dtype=dtype)
    model = TabularPolicy(config).to(getattr(torch, dtype))
    with torch.no_grad():
        model.lm_head.weight.copy_(_initial_weight(config, logits))
    model.save_pretrained(path, safe_serialization=True)
    vocab = {"<pad>": PAD, "<eos>": EOS, **{f"c{k}": context_token(k) for k in range(C)}}
    vocab.update({f"y{i}": response_token(config, i) for i in range(N)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<pad>",
        # the prompt is the user's message alone (a context token); roles and system prompts are dropped
        chat_template="{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}",
    )
    fast.save_pretrained(path)
    return path
