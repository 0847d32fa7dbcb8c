"""The model's decoding state and generation (archspec/codegen/model.py, archspec/generate.py).

For every shipped spec small enough to build here (d_model <= 512): prefill then steps give the
full forward's logits, the state holds exactly the bytes `archspec report` prints as inference
state, and greedy generation over prompts of different lengths equals the argmax of repeated full
forwards. Then sampling (determinism under a seed, top_k / top_p at their limits), EOS per row,
and every bad input as a ValueError before any work.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archspec
from archspec.generate import ragged_decode
from archspec.components.modules import state_nbytes

SPECS = Path(__file__).resolve().parent.parent / "specs"
SMALL = sorted(p.name for p in SPECS.glob("*.yaml") if archspec.load(p).model.d_model <= 512)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny(name: str = "tiny.yaml"):
    spec = archspec.load(SPECS / name)
    return archspec.build(spec, dtype="float32", seed=0).eval(), spec


def random_tokens(vocab: int, shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_the_small_specs_cover_every_family():
    assert {"tiny.yaml", "mamba-tiny.yaml", "mamba2-tiny.yaml", "mom-tiny.yaml", "moe-tiny.yaml",
            "pkm-tiny.yaml", "sparse-tiny.yaml", "hydra-tiny.yaml", "tiny-parallel.yaml"} <= set(SMALL)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("prompt", [1, 17])
def test_prefill_then_steps_give_the_forward(name, prompt):
    """fp32, normwise 1e-5 of the largest logit: each member's decoding agrees with its forward
    to ~1e-7..1e-6 (tests/test_contract.py), and measured here 2e-7..6e-7 through whole models;
    a wrong state (a missed position, a shifted RoPE, a dropped chunk) gives 1e-2 or more."""
    model, spec = tiny(name)
    t = 40
    tokens = random_tokens(spec.model.vocab_size, (2, t))
    with torch.no_grad():
        full = model(tokens).logits
        state = model.init_state(2, t)
        outs = [model.prefill(tokens[:, :prompt], state)]
        outs += [model.step(tokens[:, i], state)[:, None] for i in range(prompt, t)]
    decoded = torch.cat(outs, 1).double()
    err = ((decoded - full.double()).abs().max() / full.double().abs().max()).item()
    assert err < 1e-5, err
    # the state made for t tokens holds what the report prints as inference state at t
    reported = archspec.report(spec, seq_len=t)["totals"]["inference_state_bytes_per_sequence"]
    assert state_nbytes(state.states) == 2 * reported


def greedy_by_full_forwards(model, prompt: list[int], n: int) -> list[int]:
    """The ground truth: n times, the argmax of the whole sequence's last logits."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("name", SMALL)
def test_greedy_generation_equals_argmax_of_full_forwards(name, monkeypatch):
    """Prompts of lengths 3, 9, 9 and 14 in one call, decoded in one batch: one prefill per
    length (the two 9-token rows together), then 4 - 1 = 3 steps of the whole batch. Exact
    tokens: the logits agree to ~1e-7 of their scale (above), far below the gap between a random
    model's top two logits (a near tie would need ~1e-6). Each row alone gives the same tokens."""
    model, spec = tiny(name)
    lengths = [3, 9, 9, 14]
    prompts = [random_tokens(spec.model.vocab_size, (n,), seed=i).tolist() for i, n in enumerate(lengths)]
    calls = count_decoding_calls(model, monkeypatch)
    new = archspec.generate(model, prompts, max_new_tokens=4)
    assert calls == {"prefill": [(1, 3), (2, 9), (1, 14)], "step": [4] * 3}
    assert new == [greedy_by_full_forwards(model, p, 4) for p in prompts]
    monkeypatch.undo()
    assert new == [archspec.generate(model, [p], max_new_tokens=4)[0] for p in prompts]


def count_decoding_calls(model, monkeypatch) -> dict:
    """Record the shapes model.prefill ([B, T]) and model.step ([B]) are called with."""
    calls = {"prefill": [], "step": []}
    prefill, step = model.prefill, model.step

    def counted_prefill(tokens, state):
        calls["prefill"].append(tuple(tokens.shape))
        return prefill(tokens, state)

    def counted_step(tokens_t, state):
        calls["step"].append(tokens_t.shape[0])
        return step(tokens_t, state)

    monkeypatch.setattr(model, "prefill", counted_prefill)
    monkeypatch.setattr(model, "step", counted_step)
    return calls


@pytest.mark.parametrize("name", SMALL)
def test_a_ragged_batch_gives_each_rows_own_forward(name):
    """Prompts of lengths 14, 3, 9 and 3 continued by 6 given tokens each, in one batched loop
    (archspec.generate.ragged_decode, which generate runs: each length prefilled whole, the
    states merged, every row stepping at its own position): every row's logits at every new
    position equal the full forward over that row alone. fp32, normwise 1e-5 of the row's
    largest logit, as test_prefill_then_steps_give_the_forward (measured ~1e-7); a row absorbing
    another's position, a padding token or a key of another row is off by 1e-2 or more."""
    model, spec = tiny(name)
    lengths, new = [14, 3, 9, 3], 6
    seqs = [random_tokens(spec.model.vocab_size, (n + new,), seed=10 + i) for i, n in enumerate(lengths)]
    seen: dict[int, torch.Tensor] = {}

    def forced(i, logits):  # every row's continuation is given: teacher forcing all the way
        seen[i] = logits.clone()
        return torch.stack([s[n + i] for s, n in zip(seqs, lengths)])

    with torch.no_grad():
        ragged_decode(model, [s[:n].tolist() for s, n in zip(seqs, lengths)], new, forced, lambda: False)
        for r, (s, n) in enumerate(zip(seqs, lengths)):
            full = model(s[None]).logits[0].double()
            decoded = torch.stack([seen[i][r] for i in range(new)]).double()
            err = ((decoded - full[n - 1:-1]).abs().max() / full.abs().max()).item()
            assert err < 1e-5, (r, err)


def test_a_long_tail_is_prefilled_not_stepped(monkeypatch):
    """A 100-token prompt beside 2-token ones: one prefill per length (100 tokens in the
    parallel form), no step before the first new token, and greedy tokens equal to each row
    generated alone (the tiny spec: attention with RoPE, so per-row positions matter)."""
    model, spec = tiny()
    lengths = [2, 100, 2, 37]
    prompts = [random_tokens(spec.model.vocab_size, (n,), seed=20 + i).tolist() for i, n in enumerate(lengths)]
    calls = count_decoding_calls(model, monkeypatch)
    new = archspec.generate(model, prompts, max_new_tokens=5)
    assert calls == {"prefill": [(2, 2), (1, 100), (1, 37)], "step": [4] * 4}
    monkeypatch.undo()
    assert new == [archspec.generate(model, [p], max_new_tokens=5)[0] for p in prompts]


def test_cat_states_keeps_each_rows_position():
    """model.cat_states of states at positions 5 and 11: pos is the furthest row's and every
    positional member state records each row's offset behind it; merging states made for
    different lengths is a clear error."""
    model, spec = tiny()
    a, b = model.init_state(1, 20), model.init_state(2, 20)
    with torch.no_grad():
        model.prefill(random_tokens(spec.model.vocab_size, (1, 5)), a)
        model.prefill(random_tokens(spec.model.vocab_size, (2, 11)), b)
    merged = model.cat_states([a, b])
    assert (merged.batch, merged.pos) == (3, 11)
    lags = [s.lag.tolist() for s in merged.states.values() if getattr(s, "lag", None) is not None]
    assert lags and all(lag == [6, 0, 0] for lag in lags)
    with pytest.raises(ValueError, match="max_len"):
        model.cat_states([a, model.init_state(1, 21)])


def test_sampling_is_deterministic_under_a_seed():
    model, spec = tiny()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95)
    a = archspec.generate(model, prompts, seed=3, **kwargs)
    assert a == archspec.generate(model, prompts, seed=3, **kwargs)
    # a random tiny model is close to uniform over 256 tokens: another seed gives other samples
    assert a != archspec.generate(model, prompts, seed=4, **kwargs)
    assert all(len(row) == 12 for row in a)


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    """Both keep only the most likely token, so sampling at any temperature is the argmax."""
    model, _ = tiny()
    prompts = [[1, 2, 3], [9, 8, 7, 6]]
    greedy = archspec.generate(model, prompts, max_new_tokens=6)
    assert archspec.generate(model, prompts, 6, temperature=2.0, top_k=1, seed=0) == greedy
    assert archspec.generate(model, prompts, 6, temperature=2.0, top_p=1e-9, seed=0) == greedy


def test_each_row_stops_at_eos():
    model, _ = tiny()
    prompts = [[1, 2, 3], [9, 8, 7, 6], [5]]
    greedy = archspec.generate(model, prompts, max_new_tokens=8)
    eos = greedy[0][2]  # row 0's third token
    new = archspec.generate(model, prompts, max_new_tokens=8, eos_token_id=eos)
    for row, full in zip(new, greedy):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert row == expected
    assert len(new[0]) <= 3  # row 0 stopped early (its greedy tokens may repeat)


def test_streaming_reports_every_token_in_order():
    model, _ = tiny()
    seen: list[tuple[int, int]] = []
    new = archspec.generate(model, [[1, 2], [3, 4, 5]], 5, on_token=lambda r, tok: seen.append((r, tok)))
    for r in (0, 1):
        assert [tok for row, tok in seen if row == r] == new[r]


def test_generation_leaves_the_model_in_training_mode():
    model, _ = tiny()
    model.train()
    archspec.generate(model, [[1, 2]], 2)
    assert model.training


@pytest.mark.parametrize("prompts, kwargs, words", [
    ([list(range(120))], {"max_new_tokens": 9}, "beyond the model's max_seq_len 128"),
    ([list(range(129))], {"max_new_tokens": 0}, "max_seq_len"),
    ([[1, 2], []], {"max_new_tokens": 2}, "prompt 1 is empty"),
    ([], {"max_new_tokens": 2}, "non-empty list"),
    ([[1, 256]], {"max_new_tokens": 2}, "token id 256 outside the vocabulary [0, 256)"),
    ([[1, -1]], {"max_new_tokens": 2}, "token id -1"),
    ([[1, 2.5]], {"max_new_tokens": 2}, "token id 2.5"),
    ([[1, 2]], {"max_new_tokens": -1}, "max_new_tokens"),
    ([[1, 2]], {"max_new_tokens": 2, "temperature": -0.1}, "temperature"),
    ([[1, 2]], {"max_new_tokens": 2, "temperature": float("nan")}, "temperature"),
    ([[1, 2]], {"max_new_tokens": 2, "top_p": 0}, "top_p must be in (0, 1]"),
    ([[1, 2]], {"max_new_tokens": 2, "top_p": 1.5}, "top_p must be in (0, 1]"),
    ([[1, 2]], {"max_new_tokens": 2, "top_k": 0}, "top_k"),
    ([[1, 2]], {"max_new_tokens": 2, "eos_token_id": 300}, "eos_token_id"),
    (torch.zeros(2, 3), {"max_new_tokens": 2}, "integer ids"),
    ("hello", {"max_new_tokens": 2}, "non-empty list"),
])
def test_bad_input_is_a_clear_error_before_any_work(prompts, kwargs, words, monkeypatch):
    model, _ = tiny()

    def no_work(*args, **kw):
        raise AssertionError("decoding started before the input was checked")
    monkeypatch.setattr(model, "init_state", no_work)
    with pytest.raises(ValueError) as err:
        archspec.generate(model, prompts, **kwargs)
    assert words in str(err.value)


def test_a_state_refuses_positions_beyond_its_length():
    model, _ = tiny()
    state = model.init_state(1, 4)
    with torch.no_grad():
        model.prefill(torch.tensor([[1, 2, 3]]), state)
        model.step(torch.tensor([4]), state)
        with pytest.raises(ValueError, match="made for 4 tokens"):
            model.step(torch.tensor([5]), state)
        with pytest.raises(ValueError, match="fresh state"):
            model.prefill(torch.tensor([[1]]), state)
        with pytest.raises(ValueError, match="holds 1 sequences"):
            model.step(torch.tensor([1, 2]), model.init_state(1, 4))


# --- the command: archspec generate DIR --prompt TEXT ----------------------------------------

@pytest.fixture
def saved(tmp_path):
    """A saved mamba-tiny model (a recurrent state; vocabulary 256: every byte is a token)."""
    model, _ = tiny("mamba-tiny.yaml")
    archspec.save(model, tmp_path / "model")
    return tmp_path / "model", model


def test_cli_generate_streams_the_greedy_continuation(saved, capsys):
    from archspec.cli import main
    directory, model = saved
    assert main(["generate", str(directory), "--prompt", "héllo", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    expected = archspec.generate(model, [list("héllo".encode())], 6)[0]
    assert out == bytes(expected).decode("utf-8", errors="replace") + "\n"


def test_cli_generate_samples_deterministically(saved, capsys):
    from archspec.cli import main
    directory, _ = saved
    args = ["generate", str(directory), "--prompt", "ab", "--max-new-tokens", "8", "--temperature", "1",
            "--top-k", "40", "--top-p", "0.9", "--seed", "5"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("extra, words", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-k", "0"], "top_k"),
    (["--max-new-tokens", "200"], "max_seq_len"),
    (["--prompt", ""], "--prompt is empty"),
    (["--device", "bogus"], "unknown device"),
])
def test_cli_generate_bad_input_exits_2(saved, capsys, extra, words):
    from archspec.cli import main
    directory, _ = saved
    assert main(["generate", str(directory), "--prompt", "hi", *extra]) == 2
    captured = capsys.readouterr()
    assert words in captured.err and captured.out == ""


def test_cli_generate_refuses_a_vocabulary_without_bytes(tmp_path, capsys):
    from archspec.cli import main
    spec = archspec.loads("model: {vocab_size: 97, d_model: 32, max_seq_len: 32}\n"
                          "components:\n  A: {type: attention, n_heads: 2}\nlayout: A\n")
    archspec.save(archspec.build(spec, seed=0), tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--prompt", "hi"]) == 2
    assert "at least 256" in capsys.readouterr().err


def test_cli_generate_without_a_saved_model_exits_2(tmp_path, capsys):
    from archspec.cli import main
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.startswith("archspec: error:")


def test_cli_generate_tokenizer_without_the_package_names_it(saved, tmp_path, capsys, monkeypatch):
    from archspec.cli import main
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)  # import fails as if absent
    directory, _ = saved
    assert main(["generate", str(directory), "--prompt", "hi", "--tokenizer", str(tmp_path)]) == 2
    assert "pip install tokenizers" in capsys.readouterr().err


def test_cli_generate_with_a_tokenizer(saved, tmp_path, capsys, monkeypatch):
    """A stand-in for `tokenizers` (not installed here): two bytes per token id (id = byte + 1),
    so the command must encode, generate and decode through it, not through bytes."""
    import sys
    import types
    from archspec.cli import main

    class Tok:
        @staticmethod
        def from_file(path):
            assert path.endswith("tokenizer.json")
            return Tok()

        def encode(self, text):
            return types.SimpleNamespace(ids=[b + 1 for b in text.encode()])

        def decode(self, ids):
            return "".join(f"<{i}>" for i in ids)

    monkeypatch.setitem(sys.modules, "tokenizers", types.SimpleNamespace(Tokenizer=Tok))
    (tmp_path / "tok").mkdir()
    assert main(["generate", str(saved[0]), "--prompt", "ab", "--tokenizer", str(tmp_path / "tok")]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    directory, model = saved
    assert main(["generate", str(directory), "--prompt", "ab", "--max-new-tokens", "5",
                 "--tokenizer", str(tmp_path / "tok")]) == 0
    expected = archspec.generate(model, [[ord("a") + 1, ord("b") + 1]], 5)[0]
    assert capsys.readouterr().out == "".join(f"<{i}>" for i in expected) + "\n"
