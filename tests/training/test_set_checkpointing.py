"""set_checkpointing switches by transformers' current names, and by the older ones on models that lack them."""

from iterpo.training.trainer import set_checkpointing


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
