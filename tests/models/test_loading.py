"""Where a GGUF file's converted copy is cached: named by the file's contents, not by where it is installed."""

import shutil

from iterpo.models.loading import _gguf_cache_path, convert_gguf


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
