"""Where a GGUF file's converted copy is cached (named by the file's contents, not by where it is installed), and
loaded weights that training writes given memory of their own."""

import shutil

import torch

from iterpo.models.loading import _file_mappings, _gguf_cache_path, convert_gguf, load_model, own_memory


def test_the_same_gguf_installed_in_two_places_is_converted_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ITERPO_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "env-a" / "Model.Q4_1.gguf"
    first.parent.mkdir()
    first.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    second = tmp_path / "env-b" / "Model.Q4_1.gguf"
    second.parent.mkdir()
    shutil.copy(first, second)  # a second virtual environment's copy of the package: another path, another mtime

    target = _gguf_cache_path(first)
    assert target.parent == tmp_path / "cache" / "models" and target.name.startswith("Model.Q4_1-")
    assert _gguf_cache_path(second) == target
    # a finished conversion found under that name is used as it is (this file could not be converted at all)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert convert_gguf(second) == target

    second.write_bytes(b"GGUF" + bytes(range(255, -1, -1)) * 65)  # changed in place: converted afresh
    assert _gguf_cache_path(second) != target


def test_processes_converting_the_same_gguf_at_once_take_turns(tmp_path, monkeypatch):
    """Two converters at once (here threads, each with its own lock file handle, as two processes have): the
    first converts, the second waits for it and finds its copy instead of replacing it."""
    import threading
    import time

    from iterpo.models import loading

    monkeypatch.setenv("ITERPO_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    calls = []

    def slow_convert(path, target, what):
        calls.append(target)
        time.sleep(0.5)  # long enough that the other thread arrives while this one holds the lock
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert", slow_convert)
    got = []
    threads = [threading.Thread(target=lambda: got.append(convert_gguf(gguf))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and got == [calls[0], calls[0]]


def test_the_digest_is_read_back_instead_of_reading_the_file_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ITERPO_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    first = _gguf_cache_path(gguf)
    notes = list((tmp_path / "cache" / "models" / ".digests").iterdir())
    assert len(notes) == 1 and first.name.endswith(notes[0].read_text())
    notes[0].write_text("0123456789ab")  # the kept digest is what names the copy from now on
    assert _gguf_cache_path(gguf).name == "Model-0123456789ab"
    notes[0].write_text("not a digest")  # a damaged note: computed again from the file
    assert _gguf_cache_path(gguf) == first


def test_trained_weights_leave_the_mapped_checkpoint_and_frozen_ones_stay(tiny_model_dir):
    def mapped(p):
        return any(start <= p.data_ptr() < end for start, end in _file_mappings())

    model = load_model(tiny_model_dir)
    params = list(model.parameters())
    assert all(mapped(p) for p in params)  # transformers maps the safetensors file: copy-on-write views of it
    values = [p.detach().clone() for p in params]
    frozen = model.model.layers[0].mlp.up_proj.weight
    trained = [p for p in params if p is not frozen]
    own_memory(trained)
    assert not any(mapped(p) for p in trained) and mapped(frozen)
    assert all(torch.equal(p, v) for p, v in zip(params, values))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one tied matrix
