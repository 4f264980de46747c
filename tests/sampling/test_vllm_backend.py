"""The vLLM sampling backend, without vLLM: backend choice, and the loop driving a stand-in engine.

vLLM itself needs a CUDA GPU. These tests check everything around it: 'auto'
picks transformers on a machine without one, each sample becomes one request
carrying its own seed, outputs come back in prompt order with the EOS kept, and
a run samples each round from the right policy directory.
"""

import sys
import types

import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import UserInputError
from iterpo.io import read_json
from iterpo.sampling import backends, vllm_backend

from helpers import run_config, tiny_config

EOS = 2


class FakeParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeLLM:
    """Answers each request with tokens drawn from its seed; odd seeds stop at EOS (which vLLM may leave out)."""

    built: list[dict] = []

    def __init__(self, **kw):
        FakeLLM.built.append(kw)
        self.calls = []

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append((requests, params))
        outs = []
        for req, p in zip(requests, params):
            seed = p.seed if p.seed is not None else 7
            ids = [100 + seed % 50, 200 + len(req["prompt_token_ids"])]
            reason = "stop" if seed % 2 else "length"
            outs.append(
                types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tuple(ids), finish_reason=reason)])
            )
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(backends, "vllm_usable", lambda: True)
    FakeLLM.built = []
    return module


def test_auto_picks_transformers_without_a_gpu_and_vllm_is_refused_there():
    assert backends.choose_backend("auto") == "transformers"
    assert backends.choose_backend("transformers") == "transformers"
    with pytest.raises(UserInputError, match="vllm needs the vllm package and a CUDA GPU"):
        backends.choose_backend("vllm")


def test_one_request_per_seed_in_prompt_order_with_the_eos_kept(fake_vllm):
    assert backends.choose_backend("auto") == "vllm"
    engine = vllm_backend.VLLMSampler("some/dir", EOS, seed=3)
    assert FakeLLM.built == []  # the engine starts on the first generate()
    prompts = [[5, 6, 7], [8, 9]]
    seeds = [[11, 12, 13], [21, 22, 23]]
    out = engine.generate(prompts, seeds, temperature=0.8, top_p=0.9, max_new_tokens=5)
    assert FakeLLM.built[-1]["model"] == "some/dir" and FakeLLM.built[-1]["enable_prefix_caching"]
    requests, params = engine.llm.calls[-1]
    assert [p.seed for p in params] == [11, 12, 13, 21, 22, 23]
    assert [r["prompt_token_ids"] for r in requests] == [[5, 6, 7]] * 3 + [[8, 9]] * 3
    assert {(p.temperature, p.top_p, p.max_tokens, tuple(p.stop_token_ids)) for p in params} == {(0.8, 0.9, 5, (EOS,))}
    assert len(out) == 2 and [len(x) for x in out] == [3, 3]
    assert out[0][0] == ([100 + 11, 203, EOS], "stop")  # stopped: the EOS ends the stored response
    assert out[0][1] == ([100 + 12, 203], "length")
    assert out[1][2] == ([100 + 23, 202, EOS], "stop")
    greedy = engine.generate(prompts, None, 1.0, 1.0, 5)
    assert {p.temperature for p in engine.llm.calls[-1][1]} == {0.0} and [len(x) for x in greedy] == [1, 1]
    with engine:
        pass
    assert engine.llm is None and len(FakeLLM.built) == 1  # closed, and started once


def test_a_run_samples_each_round_from_the_previous_policy_directory(fake_vllm, tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"sampling.backend": "auto", "train.epochs": 1})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(path)
    _, store = run_config(config)
    dirs = [b["model"] for b in FakeLLM.built]
    ckpt1 = str(store.path(1, "checkpoint"))
    # eval of round 0, sampling of round 1 (both the starting model), eval 1 and sampling 2 (round 1's checkpoint),
    # eval 2
    assert dirs[:2] == [tiny_model_dir, tiny_model_dir] and dirs[2:4] == [ckpt1, ckpt1]
    assert dirs[4] == str(store.path(2, "checkpoint"))
    manifest = read_json(store.manifest_path)
    assert json_backend(manifest) == {"vllm"}


def json_backend(manifest) -> set:
    """The backend each round's sample stage recorded."""
    found = set()

    def walk(x):
        if isinstance(x, dict):
            if "backend" in x:
                found.add(x["backend"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(manifest)
    return found
