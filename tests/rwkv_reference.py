"""What the RWKV-5/6/7 parity tests (test_rwkv5.py, test_rwkv6.py, test_rwkv7.py) share: BlinkDL's own runtime,
the `rwkv` PyPI package, imported privately with its RWKV_* switches for one version (`strategy="cpu fp32"`,
JIT and CUDA kernels off), next to archbench's model on the same tiny random checkpoint in BlinkDL's `.pth`
layout, and the checks every version passes: whole-sequence logits and the per-layer state against the package,
token-by-token logits and greedy tokens, batch composition with a shared prefix, the chunked wkv form against
its per-token step, and training. A plain module, imported by the three test files as `rwkv_reference` (pytest's
default import mode puts tests/, a folder without __init__.py, on sys.path); each keeps what is specific to its
version.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, NamedTuple

import pytest
import torch

VOCAB, WIDTH, LAYERS, HEAD = 500, 128, 3, 64
REL = 1e-4  # max |logit difference| / max |reference logit|
PACKAGE_VERSION = {5: 5.2, 6: 6}  # what the package reads a random_pth(version=...) file as (RWKV-7: its own class)


class Pair(NamedTuple):
    """The rwkv package's model and archbench's on the same random weights, the BlinkDL state dict, the family."""

    version: int
    ref: Any
    model: Any
    sd: dict
    family: Any


def rwkv_package(version: int):
    """A private copy of `rwkv.model` with its RWKV-7 path on (version 7) or its v4-v6 path (RWKV_V7_ON off); it
    reads RWKV_* env vars at import, construction and forward time (the caller keeps them set, see `pair`) and
    flips global TF32 switches (restored here)."""
    spec = importlib.util.find_spec("rwkv.model") if importlib.util.find_spec("rwkv") else None
    if spec is None:
        pytest.skip("BlinkDL's `rwkv` package is not installed (pip install rwkv)")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    private = importlib.util.spec_from_file_location(f"_rwkv_model_v{version}", spec.origin)
    mod = importlib.util.module_from_spec(private)
    private.loader.exec_module(mod)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return mod


def pair(tmp_path_factory, version: int, model_cls, family):
    """For a module-scoped `pair` fixture (`yield from`): a random RWKV-`version` `.pth`, the package's model on
    it and archbench's model on its converted directory, the package's env switches set while the fixture lives."""
    from archbench.models.rwkv_convert import cached, random_pth

    tmp = tmp_path_factory.mktemp(f"rwkv{version}")
    sd = random_pth(tmp / "tiny.pth", vocab=VOCAB, width=WIDTH, layers=LAYERS, head=HEAD, version=version)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RWKV_V7_ON", "1" if version == 7 else "0")
        mp.setenv("RWKV_JIT_ON", "0")
        mp.setenv("RWKV_CUDA_ON", "0")
        package = rwkv_package(version)
        if version == 7:  # RWKV_x070 takes no `verbose` and has no `version`
            ref = package.RWKV(model=str(tmp / "tiny"), strategy="cpu fp32")
        else:
            ref = package.RWKV(model=str(tmp / "tiny"), strategy="cpu fp32", verbose=False)
            assert ref.version == PACKAGE_VERSION[version]  # the package read the layout random_pth wrote
        model = model_cls.from_pretrained(str(cached(tmp / "tiny.pth", tmp / "cache"))).eval()
        yield Pair(version, ref, model, sd, family)


def ids(n: int, seed: int) -> list[int]:
    """`n` seeded random token ids below VOCAB."""
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def check_prefill_matches_package(p: Pair, length: int) -> None:
    """Whole-sequence logits (the model's forward and the family's prefill) and each layer's state (token shifts
    and the (H, N, N) wkv matrix, the package's layout: state[3i], state[3i+1], state[3i+2]) after `length` tokens."""
    tokens = ids(length, 1)
    with torch.no_grad():
        want, ref_state = p.ref.forward(tokens, None, full_output=True)  # (T, V)
        got = p.model(torch.tensor([tokens])).logits[0]
        state, last = p.family.prefill(p.model, [tokens])
    print(f"\nRWKV-{p.version} prefill of {length} tokens vs rwkv package: max abs {(got - want).abs().max():.2e}, "
          f"relative {rel(got, want):.2e}")
    assert rel(got, want) < REL
    assert rel(last[0], want[-1]) < REL
    for i in range(LAYERS):
        assert torch.allclose(state.att_x[i][0], ref_state[3 * i], atol=1e-5)
        assert rel(state.wkv[i][0], ref_state[3 * i + 1]) < REL
        assert torch.allclose(state.ffn_x[i][0], ref_state[3 * i + 2], atol=1e-5)


def check_steps_match_package(p: Pair) -> None:
    """A 30-token prompt, then 40 steps, each side feeding its own greedy token back: logits within REL at every
    step and identical tokens."""
    prompt, worst, gap = ids(30, 2), 0.0, math.inf
    with torch.no_grad():
        want, ref_state = p.ref.forward(prompt, None)
        state, got = p.family.prefill(p.model, [prompt])
        ours, theirs = [], []
        for _ in range(40):
            worst = max(worst, rel(got[0], want))
            top = want.topk(2).values
            gap = min(gap, (top[0] - top[1]).item())
            theirs.append(int(want.argmax()))
            ours.append(int(got[0].argmax()))
            want, ref_state = p.ref.forward([theirs[-1]], ref_state)  # the package's one-token path
            state, got = p.family.step(p.model, torch.tensor([ours[-1]]), state)
    print(f"\nRWKV-{p.version} 40 steps vs rwkv package: max relative logit difference {worst:.2e}, "
          f"smallest reference top-2 gap {gap:.2e}")
    assert worst < REL
    assert ours == theirs


def check_batch_with_prefix_equals_alone(p: Pair, lengths, keeps):
    """A shared batch-1 prefix state (40 tokens), suffixes of `lengths`, prefilled as one batch: every row's
    logits equal running prefix + suffix alone from the zero state; then for each index list in `keeps` the
    state of those rows (the others leave the batch) takes one step on their greedy tokens, equal to the step
    from each row's own state. Returns the last stepped state."""
    fam = p.family
    prefix, rows = ids(40, 3), [ids(n, 10 + n) for n in lengths]
    with torch.no_grad():
        state, logits = fam.prefill(p.model, rows, fam.prefill(p.model, [prefix])[0])
        alone = [fam.prefill(p.model, [prefix + row]) for row in rows]
        for j in range(len(rows)):
            assert rel(logits[j], alone[j][1][0]) < REL
        for rows_left in keeps:
            keep = torch.tensor(rows_left)
            tokens = logits[keep].argmax(-1)
            stepped, nxt = fam.step(p.model, tokens, fam.select(state, keep))
            for j, i in enumerate(keep.tolist()):
                assert rel(nxt[j], fam.step(p.model, tokens[j:j + 1], alone[i][0])[1][0]) < REL
    return stepped


def check_chunked_equals_steps(step, chunked, seqs, consts, s0, chunks) -> None:
    """A chunked wkv form (`chunked(*seqs, *consts, s0, chunk=c)`) against its per-token `step(*seqs at t,
    *consts, s)` over the time axis (dim 2 of each (B, H, T, N) input), outputs and final state to 1e-9 in fp64."""
    outs, s = [], s0
    for i in range(seqs[0].shape[2]):
        o, s = step(*(x[:, :, i] for x in seqs), *consts, s)
        outs.append(o)
    for chunk in chunks:
        o, s_end = chunked(*seqs, *consts, s0, chunk=chunk)
        assert torch.allclose(o, torch.stack(outs, 2), atol=1e-9, rtol=1e-9), chunk
        assert torch.allclose(s_end, s, atol=1e-9, rtol=1e-9), chunk


def check_save_pretrained_round_trip(model, ids_: torch.Tensor, path) -> None:
    """save_pretrained -> transformers' AutoModelForCausalLM.from_pretrained (archbench registers its RWKV
    classes) gives the same logits to the bit."""
    from transformers import AutoModelForCausalLM

    import archbench.models  # noqa: F401  registers rwkv5/6/7

    model.save_pretrained(str(path))
    again = AutoModelForCausalLM.from_pretrained(str(path))
    with torch.no_grad():
        assert torch.equal(again(ids_).logits, model(ids_).logits)


def check_training_lowers_loss(model, ids_: torch.Tensor, every_grad: bool = False) -> None:
    """Eight Adam steps (lr 3e-3) on `ids_` as its own labels lower the loss by more than 0.1; with `every_grad`,
    every parameter gets a gradient at every step."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids_, labels=ids_).loss
        opt.zero_grad()
        loss.backward()
        if every_grad:
            assert all(p.grad is not None for p in model.parameters()), "a parameter got no gradient"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def world_vocab():
    """The world vocabulary file the `rwkv` package ships (skips the test without it)."""
    from archbench.models.rwkv_world import package_vocab

    vocab = package_vocab()
    if vocab is None:
        pytest.skip("the world vocabulary ships with BlinkDL's `rwkv` package (not installed)")
    return vocab


def blinkdl_world_tokenizer():
    """BlinkDL's TRIE_TOKENIZER (the package's rwkv_tokenizer.py) on the world vocabulary."""
    vocab = world_vocab()
    spec = importlib.util.spec_from_file_location("_rwkv_tokenizer", vocab.parent / "rwkv_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TRIE_TOKENIZER(str(vocab))
