"""set_checkpointing switches by transformers' current names, and by the older ones on models that lack them; training
with checkpointing gives the same values as without."""

import torch

from iterpo.config import TrainSection
from iterpo.losses import get_loss
from iterpo.models import lean
from iterpo.models.loading import load_model
from iterpo.training import train
from iterpo.training.trainer import set_checkpointing

from helpers import sum_pairs


class _Older:
    """A model of a transformers release before activation_checkpointing_* (>= 4.56 is allowed)."""

    def __init__(self):
        self.calls = []

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.calls.append(("enable", gradient_checkpointing_kwargs))

    def gradient_checkpointing_disable(self):
        self.calls.append(("disable", None))


class _Newer(_Older):
    """A model of transformers 5.x: the new names, with the old ones still there as deprecated aliases."""

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None):
        self.calls.append(("new enable", activation_checkpointing_kwargs))

    def activation_checkpointing_disable(self):
        self.calls.append(("new disable", None))


def test_the_current_names_where_the_model_has_them_else_the_older_ones():
    newer, older = _Newer(), _Older()
    for model in (newer, older):
        set_checkpointing(model, True)
        set_checkpointing(model, False)
    assert newer.calls == [("new enable", {"use_reentrant": False}), ("new disable", None)]
    assert older.calls == [("enable", {"use_reentrant": False}), ("disable", None)]


def test_checkpointing_changes_no_value(tiny_model_dir, tokenizer, monkeypatch):
    """The recomputed forward is the same arithmetic as the first: the same losses and the same weights, bit for
    bit, with the default layout (lean layers, gradients added in place) and several passes per step."""
    examples = sum_pairs(tokenizer, tiny_model_dir)
    mlp_forward, forwards = lean._mlp_forward, {False: 0, True: 0}
    logs, models = {}, {}
    for on in (False, True):

        def counted(*args, on=on, **kwargs):
            forwards[on] += 1
            return mlp_forward(*args, **kwargs)

        monkeypatch.setattr(lean, "_mlp_forward", counted)
        models[on] = load_model(tiny_model_dir)
        config = TrainSection(lr=1e-3, batch_size=3, epochs=2, max_tokens_per_pass=40, gradient_checkpointing=on)
        logs[on] = train(models[on], examples, get_loss("dpo"), config, seed=0, pad_id=tokenizer.pad_token_id)
    assert forwards[True] == 2 * forwards[False] > 0  # every layer's forward ran again in the backward
    assert [x["loss"] for x in logs[True]] == [x["loss"] for x in logs[False]]
    first, second = dict(models[False].named_parameters()), dict(models[True].named_parameters())
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], load_model(tiny_model_dir).model.embed_tokens.weight)
