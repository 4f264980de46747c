import pytest
import torch
import torch.nn.functional as F

from iterpo.models.chat import encode_prompt
from iterpo.sampling import derive_seed, generate
from iterpo.sampling.base import TransformersSampler
from iterpo.sampling.generate import SeededSampler
from iterpo.sampling.invariant import GROUPED, RowBlocks, register_grouped_attention

from helpers import tiny_llama_config

# (out, in) of the built-in model's linear layers (SmolLM2-135M: hidden 576, MLP 1536) and a vocabulary-sized
# output layer: on a CPU with AMX, plain bfloat16 F.linear gives some of these rows different results for
# different row counts (1, 7, 256 and 300 rows among those below)
SHAPES = [(576, 576), (576, 1536), (8192, 576)]
ROW_COUNTS = [1, 7, 64, 100, 128, 200, 256, 300]


@pytest.mark.parametrize("out_features,in_features", SHAPES)
def test_row_blocks_make_a_rows_result_independent_of_the_row_count(out_features, in_features):
    torch.manual_seed(0)
    weight = (torch.randn(out_features, in_features) * 0.05).bfloat16()
    x = torch.randn(max(ROW_COUNTS), in_features).bfloat16()
    with RowBlocks(128):
        ref = F.linear(x[:1], weight)  # the first row, alone
        for M in ROW_COUNTS:
            got = F.linear(x[:M], weight)
            assert got.shape == (M, out_features)
            assert torch.equal(got[:1], ref), f"{M} rows changed the first row's result"
            # and the numbers are the layer's: within bfloat16 rounding of a float32 product
            want = x[:M].float() @ weight.float().T
            assert torch.allclose(got.float(), want, atol=0.05, rtol=0.02)


def test_row_blocks_keep_leading_dims_and_bias():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(3, 5, 16)  # 15 rows: blocks of 4, the last padded
    with RowBlocks(4):
        got = layer(x)
    assert got.shape == (3, 5, 8)
    assert torch.allclose(got, F.linear(x, layer.weight, layer.bias), atol=1e-6)
    with pytest.raises(ValueError, match="rows must be >= 1"):
        RowBlocks(0)


def _model(tokenizer, **sizes):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = tiny_llama_config(
        tokenizer, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, max_position_embeddings=512, **sizes
    )
    return LlamaForCausalLM(config).eval()


def test_grouped_attention_matches_transformers_plain_attention(tokenizer):
    """Same model, same padded batch: logits with the grouped attention equal the eager ones (float32), with
    left padding and a KV cache in play."""
    register_grouped_attention()
    model = _model(tokenizer, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    ids = torch.randint(0, 1000, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    outs = {}
    for impl in ("eager", GROUPED):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            outs[impl] = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.allclose(outs["eager"], outs[GROUPED], atol=1e-5)
    assert not torch.allclose(outs["eager"][0], outs["eager"][1], atol=1e-3)  # the rows really differ


def test_seeded_draws_follow_softmax_over_temperature():
    """Inverse-CDF draws: 20000 seeded rows on fixed scores give softmax(scores / T)'s frequencies, top-p cuts
    the tail, and a token of probability 0 is never drawn."""
    scores = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    n, T = 20000, 0.8
    sampler = SeededSampler(list(range(n)), temperature=T, top_p=1.0)
    picked = sampler(torch.arange(n), scores.expand(n, -1))
    freq = torch.bincount(picked, minlength=5).double() / n
    want = torch.softmax(scores.double() / T, dim=-1)
    assert freq[4] == 0
    assert torch.allclose(freq, want, atol=4 * (want * (1 - want) / n).sqrt().max())  # 4 standard errors
    # the same seeds draw the same tokens, whatever rows they share the call with
    again = SeededSampler(list(range(n)), temperature=T, top_p=1.0)
    assert torch.equal(again(torch.arange(0, n, 2), scores.expand(n // 2, -1)), picked[::2])
    top = SeededSampler(list(range(2000)), temperature=1.0, top_p=0.7)(torch.arange(2000), scores.expand(2000, -1))
    assert set(top.tolist()) == {0, 1}  # p = 0.64, 0.24: the smallest set reaching 0.7


def test_bfloat16_samples_of_the_built_in_models_shapes_do_not_depend_on_the_batch(tokenizer):
    """The built-in model's widths (hidden 576, MLP 1536, 9 query and 3 key/value heads, the tokenizer's 49152
    entries) in bfloat16, as a run samples: the same samples alone, in a batch of 8 and in one of 48. On a CPU
    with AMX, without fixed row blocks all 12 prompts' samples changed in the batch of 48."""
    model = _model(
        tokenizer,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
    )
    model = TransformersSampler(lambda: model, tokenizer, "bfloat16").generating_model()
    asks = [f"What is {i} times {i + 7}?" for i in range(12)]
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": ask}]) for ask in asks]
    seeds = [[derive_seed(5, i, k) for k in range(4)] for i in range(12)]
    alone = [generate(model, tokenizer, [p], [s], 1.0, 1.0, 12, batch_size=4)[0] for p, s in zip(prompts, seeds)]
    assert generate(model, tokenizer, prompts, seeds, 1.0, 1.0, 12, batch_size=48) == alone
    assert generate(model, tokenizer, prompts, seeds, 1.0, 1.0, 12, batch_size=8) == alone


def test_finished_rows_kept_in_the_batch_change_nothing(tiny_model_dir, tokenizer):
    """With row blocks, finished rows wait in the batch until dropping them frees a block: each prompt's samples
    equal those it gets decoding alone, for blocks of 1 (every finished row dropped at once) and of 4 (18 rows:
    finished ones wait). (Stop strings of one letter make the tiny model's rows stop at different steps.)"""
    from iterpo.models.loading import load_model

    model = TransformersSampler(lambda: load_model(tiny_model_dir), tokenizer, "bfloat16").generating_model()
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": f"Say {i}"}]) for i in range(6)]
    seeds = [[derive_seed(9, i, k) for k in range(3)] for i in range(6)]
    stop = ("e", "a")
    for block in (1, 4):
        together = generate(model, tokenizer, prompts, seeds, 1.0, 1.0, 10, batch_size=18, stop=stop, row_block=block)
        for p, s, want in zip(prompts, seeds, together):
            alone = generate(model, tokenizer, [p], [s], 1.0, 1.0, 10, batch_size=3, stop=stop, row_block=block)
            assert alone == [want]
    lengths = {len(ids) for outs in together for ids, _ in outs}
    assert len(lengths) > 1  # rows did stop at different steps
