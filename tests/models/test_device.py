import torch

from iterpo.models import device
from iterpo.models.chat import encode_prompt
from iterpo.models.loading import load_model
from iterpo.sampling import derive_seed
from iterpo.sampling.base import TransformersSampler


def test_sampling_dtype_auto_is_bfloat16_only_for_float32_policies_on_native_bfloat16(monkeypatch):
    monkeypatch.setattr(device, "fast_bfloat16", lambda name: name == "cpu")
    assert device.sampling_dtype("auto", "float32", "cpu") == "bfloat16"
    assert device.sampling_dtype("auto", "float64", "cpu") == "float64"  # exact checks stay exact
    assert device.sampling_dtype("auto", "float32", "mps") == "float32"
    assert device.sampling_dtype("float32", "float32", "cpu") == "float32"  # a named dtype is kept
    monkeypatch.setattr(device, "fast_bfloat16", lambda name: False)
    assert device.sampling_dtype("auto", "float32", "cpu") == "float32"


def test_fast_bfloat16_reads_the_cpu_flags(monkeypatch, tmp_path):
    flags = tmp_path / "cpuinfo"
    monkeypatch.setattr(device, "Path", lambda _: flags)
    flags.write_text("flags\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert device.fast_bfloat16("cpu")
    flags.write_text("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert not device.fast_bfloat16("cpu")
    assert not device.fast_bfloat16("mps")


def test_a_sampler_in_another_dtype_generates_with_a_cast_copy(tiny_model_dir, tokenizer):
    policy = load_model(tiny_model_dir)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    seeds = [[derive_seed(1, k) for k in range(3)]]
    with TransformersSampler(lambda: policy, tokenizer, "bfloat16") as sampler:
        copy = sampler.generating_model()
        assert copy is not policy and next(copy.parameters()).dtype == torch.bfloat16
        assert sampler.generating_model() is copy  # made once
        got = sampler.generate([prompt], seeds, 1.0, 1.0, 6, 8)
    # the policy itself is untouched: still float32, same weights
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in policy.state_dict().items())
    from iterpo.sampling import generate

    assert got == generate(copy, tokenizer, [prompt], seeds, 1.0, 1.0, 6, 8)
    with TransformersSampler(lambda: policy, tokenizer, "float32") as sampler:
        assert sampler.generating_model() is policy  # its own dtype: no copy
