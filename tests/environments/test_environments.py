"""Tools a policy calls: the calculator's exact, bounded arithmetic, the Python tool's sandbox, BM25 retrieval
over the bundled collection, and episodes: turns, tool messages, masks, limits, seeds."""

import json
import os
import time
from pathlib import Path

import pytest

from iterpo.environments import make_environment
from iterpo.environments.episodes import Limits, run_episodes
from iterpo.errors import ConfigError, DataError
from iterpo.models.chat import encode_observation
from iterpo.tasks.corpus import documents, towns

# ---------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    "request_,answer",
    [
        ("1234 * 5678", "7006652"),
        ("4821*317 - 12093", "1516164"),
        ("7 / 2", "3.5"),
        ("84 / 4", "21"),
        ("2 ** 10", "1024"),
        ("(3 + 4) * -2", "-14"),
        ("1,234 + 1", "1235"),
        ("0.1 + 0.2", "0.3"),
        ("17 // 5 + 17 % 5", "5"),
        ("12 × 3 =", "36"),
    ],
)
def test_the_calculator_computes_exactly(request_, answer):
    assert make_environment("calculator", {}).call(request_) == answer


@pytest.mark.parametrize(
    "request_,words",
    [
        ("__import__('os').system('id')", "only numbers"),
        ("open('/etc/passwd').read()", "only numbers"),
        ("9 ** 9 ** 9", "exponents"),
        ("10 ** 64 * 10 ** 64 * 10 ** 64 * 10 ** 64", "digits"),
        ("1 / 0", "division by zero"),
        ("x + 1", "only numbers"),
        ("", "empty"),
        ("(" * 5000 + "1" + ")" * 5000, "too long"),
        ("2 +", "not an arithmetic expression"),
        ("what is 2 + 2", "only numbers"),
        ("(" * 400 + "1" + ")" * 400, "error"),
        ("[1, 2] * 3", "error"),
        ("[1] * 3", "only numbers"),
        ("True + True", "only numbers"),
    ],
)
def test_the_calculator_refuses_what_is_not_bounded_arithmetic_with_a_message(request_, words):
    start = time.perf_counter()
    answer = make_environment("calculator", {"max_digits": 100}).call(request_)
    assert answer.startswith("error:") and words in answer, answer
    assert time.perf_counter() - start < 1.0


def test_environment_options_are_checked():
    with pytest.raises(ConfigError, match="no option 'digits'"):
        make_environment("calculator", {"digits": 3})
    with pytest.raises(ConfigError, match="top_k"):
        make_environment("retrieval", {"top_k": 0})
    with pytest.raises(ConfigError, match="unknown environment 'abacus'"):
        make_environment("abacus", {})


# ---------------------------------------------------------------- python


@pytest.fixture(scope="module")
def python_tool():
    return make_environment("python", {"timeout": 4, "cpu_seconds": 2, "memory_mb": 256, "max_output_chars": 200})


def test_the_python_tool_returns_what_the_code_prints_or_its_error(python_tool):
    assert python_tool.call("print(1234 * 5678)") == "7006652"
    assert python_tool.call("x = 3") == "(no output)"
    assert python_tool.call("1 / 0") == "error: ZeroDivisionError: division by zero"
    assert python_tool.call("import sys; sys.exit(3)") == "error: exit status 3"
    long = python_tool.call("print('x' * 100000)")
    assert len(long) == 200 and long.startswith("...")


def _sandbox_processes():
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "sleep 987" in cmd or "iterpo-sandbox" in cmd:
                out.append(cmd)
    return out


def test_the_python_tool_survives_the_sandbox_attacks(python_tool, tmp_path, monkeypatch):
    """The code verifier's threat model: the tool answers every attack with a bounded message, nothing outside
    its throw-away directory changes, no process outlives it, the network and the environment stay closed."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)
    os.chmod(victim, 0o666)
    monkeypatch.setenv("ITERPO_TEST_SECRET", "s3cret")
    attacks = {
        "infinite loop": "while True:\n    pass",
        "sleep": "import time\ntime.sleep(1000)",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "background child": "import subprocess\nsubprocess.Popen(['sleep', '987'], start_new_session=True)",
        "memory": "x = bytearray(8 * 2**30)",
        "delete a file": f"import os\nos.remove({str(victim)!r})",
        "overwrite a file": f"open({str(victim)!r}, 'w').write('gone')",
        "write outside": "open('/tmp/iterpo-tool-pwned', 'w').write('x')",
        "remount": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(None, b'/', None, 32 | 4096, None) == 0, 'remount refused'\n"
        "open('/tmp/iterpo-tool-pwned', 'w').write('x')",
        "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
        "secrets": "import os\nprint(os.environ.get('ITERPO_TEST_SECRET'))",
        "exit early": "import os\nos._exit(0)",
        "huge output": "import sys\nsys.stdout.write('y' * 10**7)",
        "binary output": "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 100)",
    }
    for name, code in attacks.items():
        start = time.perf_counter()
        answer = python_tool.call(code)
        assert isinstance(answer, str) and len(answer) <= 200, name
        assert time.perf_counter() - start < 4 + 5, name
        assert "s3cret" not in answer, name
    assert victim.read_text() == "keep me"
    assert not Path("/tmp/iterpo-tool-pwned").exists()
    time.sleep(0.5)
    assert _sandbox_processes() == []
    # and it still works after all of them
    assert python_tool.call("print(6 * 7)") == "42"


# ---------------------------------------------------------------- retrieval


def test_the_bundled_collection_is_fixed_and_every_town_unique():
    names = [t.name for t in towns()]
    assert len(names) == len(set(names)) == len(documents()) == 400
    assert documents()[0] == towns()[0].document()  # generated from a fixed seed: the same on every machine
    assert str(towns()[0].founded) in documents()[0]


def test_retrieval_finds_the_town_a_question_names():
    env = make_environment("retrieval", {"top_k": 2})
    hits = 0
    for town in towns()[:50]:
        answer = env.call(f"When was {town.name} founded?")
        hits += answer.split("\n")[0].startswith(town.name)
    assert hits >= 48  # BM25 on a unique made-up name
    assert env.call("   ") == "error: empty query"
    assert env.call("the of and") == "no documents match"


def test_retrieval_reads_a_corpus_file_and_names_what_is_wrong_in_it(tmp_path):
    good = tmp_path / "docs.jsonl"
    good.write_text(
        json.dumps({"title": "Zebra", "text": "Zebras have stripes."}) + "\n\n" + '{"text": "Cats purr."}\n'
    )
    env = make_environment("retrieval", {"corpus": str(good), "top_k": 1})
    env.check()
    assert env.call("stripes") == "Zebra: Zebras have stripes."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match="line 2 needs a non-empty 'text'"):
        make_environment("retrieval", {"corpus": str(bad)}).check()
    with pytest.raises(DataError, match="is not a file"):
        make_environment("retrieval", {"corpus": str(tmp_path / "missing.jsonl")}).check()
    (tmp_path / "notjson.jsonl").write_text("{oops\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        make_environment("retrieval", {"corpus": str(tmp_path / "notjson.jsonl")}).check()


# ---------------------------------------------------------------- episodes


class Scripted:
    """A sampler that writes fixed turns: per call, the next turn of a script chosen by the seed's parity."""

    def __init__(self, tokenizer, scripts):
        self.tok, self.scripts, self.calls = tokenizer, scripts, []

    def generate(self, prompts, seeds, temperature, top_p, max_new_tokens, batch_size, progress=None, stop=()):
        self.calls.append((len(prompts), max_new_tokens, tuple(stop)))
        out = []
        for context, seed in zip(prompts, seeds or [[None]] * len(prompts)):
            script = self.scripts[(seed[0] or 0) % len(self.scripts)]
            turn = sum(1 for t in context if t == self.tok.eos_token_id) - 2  # the prompt holds 2 turn ends
            text = script[min(turn, len(script) - 1)]
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if not text.endswith(tuple(stop)):
                ids = ids + [self.tok.eos_token_id]
            reason = "length" if len(ids) > max_new_tokens else "stop"
            out.append([(ids[:max_new_tokens], reason)])
        return out


def _prompt(tokenizer, text="What is 1234 * 5678?"):
    from iterpo.models.chat import encode_prompt

    return encode_prompt(tokenizer, [{"role": "user", "content": text}], "tools")


def _play(sampler, tokenizer, env, limits, prompts, seeds):
    """run_episodes at temperature 1, top-p 1, 8 sequences a batch (the scripted samplers ignore all three)."""
    return run_episodes(sampler, tokenizer, env, limits, prompts, seeds, 1.0, 1.0, 8)


def test_an_episode_interleaves_turns_and_tool_messages_with_a_mask(tokenizer):
    env = make_environment("calculator", {})
    script = ["Let me compute. <calc>1234 * 5678</calc>", "The answer is 7006652."]
    sampler = Scripted(tokenizer, [script])
    [[ep]] = _play(sampler, tokenizer, env, Limits(4, 256, 64, 32), [_prompt(tokenizer)], [[0]])
    assert ep.turns == script and ep.observations == ["7006652"] and ep.finish_reason == "stop"
    assert ep.final == "The answer is 7006652."
    obs = encode_observation(tokenizer, "7006652")
    first = tokenizer(script[0], add_special_tokens=False)["input_ids"]
    # turn 1 (the policy's), the tool message (context), turn 2 ending with EOS (the policy's)
    assert ep.token_ids[: len(first)] == first
    assert ep.token_ids[len(first) : len(first) + len(obs)] == obs
    assert ep.policy_mask == [True] * len(first) + [False] * len(obs) + [True] * (
        len(ep.token_ids) - len(first) - len(obs)
    )
    assert ep.step_ends == [len(first), len(ep.token_ids)]
    assert "tool\n7006652" in tokenizer.decode(obs) and tokenizer.decode(obs).rstrip().endswith("assistant")
    assert ep.transcript() == f"{script[0]}\n<result>7006652</result>\n{script[1]}"
    assert sampler.calls[0][2] == ("</calc>",)


def test_episode_limits_end_episodes_with_their_reasons(tokenizer):
    env = make_environment("calculator", {})
    calls_forever = ["<calc>1 + 1</calc>"]
    prompt = _prompt(tokenizer)
    [[ep]] = _play(Scripted(tokenizer, [calls_forever]), tokenizer, env, Limits(3, 1000, 64, 32), [prompt], [[0]])
    assert ep.finish_reason == "turns" and len(ep.turns) == 3 and len(ep.observations) == 2
    assert ep.step_ends[-1] == len(ep.token_ids)  # it ends with the unanswered call
    [[ep]] = _play(Scripted(tokenizer, [calls_forever]), tokenizer, env, Limits(9, 40, 64, 32), [prompt], [[0]])
    assert ep.finish_reason == "length" and len(ep.token_ids) <= 40
    chatty = ["word " * 50]
    [[ep]] = _play(Scripted(tokenizer, [chatty]), tokenizer, env, Limits(4, 20, 64, 32), [prompt], [[0]])
    assert ep.finish_reason == "length" and len(ep.token_ids) == 20
    # a long answer is cut to max_observation_tokens
    python = make_environment("python", {"timeout": 4})
    long = ["<python>print('z ' * 500)</python>", "done"]
    [[ep]] = _play(Scripted(tokenizer, [long]), tokenizer, python, Limits(4, 1000, 64, 10), [prompt], [[0]])
    assert ep.observations[0].endswith(" ...") and len(tokenizer(ep.observations[0][:-4])["input_ids"]) <= 10
    assert ep.finish_reason == "stop"


def test_each_episode_turn_has_its_own_seed_and_finished_episodes_leave_the_batch(tokenizer):
    from iterpo.sampling import derive_seed

    env = make_environment("calculator", {})
    prompts = [_prompt(tokenizer), _prompt(tokenizer, "What is 2 + 2?")]
    seen = []

    class Recording(Scripted):
        def generate(self, prompts, seeds, *args, **kwargs):
            seen.append(seeds)
            return super().generate(prompts, seeds, *args, **kwargs)

    # the script is chosen by the turn's seed: with these seeds two episodes call the tool, two answer at once
    scripts = [["<calc>2 + 2</calc>", "4"], ["5"]]
    limits, seeds = Limits(4, 256, 64, 32), [[13, 14], [15, 16]]
    out = _play(Recording(tokenizer, scripts), tokenizer, env, limits, prompts, seeds)
    assert seen[0] == [[derive_seed(s, "turn", 0)] for s in (13, 14, 15, 16)]
    running = [(i, k) for i in range(2) for k in range(2) if len(out[i][k].turns) > 1]
    assert running == [(0, 1), (1, 0)]
    assert seen[1] == [[derive_seed((13, 14, 15, 16)[2 * i + k], "turn", 1)] for i, k in running]
    for row in out:
        for ep in row:  # a call is answered, an answer ends the episode
            assert len(ep.observations) == len(ep.turns) - 1 and ep.finish_reason == "stop"
    again = _play(Recording(tokenizer, scripts), tokenizer, env, limits, prompts, seeds)
    assert again == out
    seen.clear()
    greedy = _play(Recording(tokenizer, scripts), tokenizer, env, limits, prompts, None)
    assert [len(row) for row in greedy] == [1, 1] and seen[0] is None
