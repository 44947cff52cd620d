"""The paged KV cache and the continuous-batching engine: block bookkeeping, and outputs equal to
unbatched greedy generation whatever joins or leaves the batch."""
from __future__ import annotations

import math
import time

import pytest
import torch

from companion.generate import generate
from companion.model import GPT, GPTConfig
from companion.serve import BlockAllocator, Engine, PagedKVCache, Request
from companion.serve.engine import QueueFull


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(pos: str = "rope", n_kv_heads: int = 2) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=23, context_length=48, d_model=32, n_layers=2, n_heads=4,
                    n_kv_heads=n_kv_heads, pos=pos, norm="rmsnorm", mlp="swiglu", bias=False)
    model = GPT(cfg).double().eval()  # float64: batched and unbatched sums agree to ~1e-16
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [2] * 20, [7], [3, 9, 1, 22, 5]]
LENGTHS = [10, 3, 20, 15, 1]


def reference(model, prompts=PROMPTS, lengths=LENGTHS):
    return [generate(model, torch.tensor([p]), n, temperature=0)[0, len(p):].tolist()
            for p, n in zip(prompts, lengths)]


def test_allocator_hands_out_and_takes_back():
    a = BlockAllocator(3)
    got = [a.allocate() for _ in range(3)]
    assert sorted(got) == [0, 1, 2] and a.num_free == 0
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        a.allocate()
    a.free([got[1]])
    assert a.num_free == 1 and a.allocate() == got[1]
    with pytest.raises(ValueError, match="not allocated"):
        a.free([got[1], got[1]])


def test_block_table_grows_one_block_per_block_size_tokens():
    """block_size 4: 9 tokens fill blocks for tokens 0-3, 4-7 and 8: three blocks."""
    cache = PagedKVCache(1, 1, 2, block_size=4, num_blocks=8)
    cache.add_sequence(0)
    k = torch.arange(9.0).view(1, 9, 1).expand(1, 9, 2)  # (H_kv, T, D): token t holds t
    cache.write_prefill(0, [k], [k])
    assert len(cache.tables[0]) == 3 and cache.lengths[0] == 9
    keys, _ = cache.gather(0, [0])
    assert keys[0, 0, :9, 0].tolist() == list(range(9))
    cache.free_sequence(0)
    assert cache.allocator.num_free == 8


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
@pytest.mark.parametrize("max_batch, block_size", [(1, 16), (2, 4), (8, 3)])
def test_continuous_batching_equals_unbatched_greedy(pos, max_batch, block_size):
    model = tiny(pos)
    engine = Engine(model, max_batch=max_batch, block_size=block_size)
    assert engine.generate(PROMPTS, LENGTHS) == reference(model)
    assert engine.cache.allocator.num_free == engine.cache.allocator.num_blocks  # all returned


def test_static_batching_equals_unbatched_greedy_and_takes_more_steps():
    model = tiny()
    static = Engine(model, max_batch=2, policy="static")
    cont = Engine(model, max_batch=2, num_blocks=static.cache.allocator.num_blocks)  # same memory
    assert static.generate(PROMPTS, LENGTHS) == reference(model)
    cont.generate(PROMPTS, LENGTHS)
    assert static.steps > cont.steps


def test_requests_joining_mid_run_match_unbatched():
    model = tiny(n_kv_heads=4)
    engine = Engine(model, max_batch=3, block_size=4)
    first = [engine.submit(Request(p, n)) for p, n in zip(PROMPTS[:2], LENGTHS[:2])]
    for _ in range(4):
        engine.step()
    later = [engine.submit(Request(p, n)) for p, n in zip(PROMPTS[2:], LENGTHS[2:])]
    while engine.has_work:
        engine.step()
    assert [r.output for r in first + later] == reference(model)
    assert all(r.finish_reason == "length" for r in first + later)


def test_paging_holds_less_than_max_length_preallocation():
    model = tiny()
    engine = Engine(model, max_batch=5, block_size=4)
    engine.generate(PROMPTS, LENGTHS)
    prealloc = 5 * engine.cache.blocks_for(model.config.context_length)
    assert engine.cache.peak_blocks < prealloc / 2


def test_small_pool_makes_requests_wait_not_fail():
    model = tiny()
    engine = Engine(model, max_batch=4, block_size=4, num_blocks=11)  # room for ~1-2 requests
    assert engine.generate(PROMPTS, LENGTHS) == reference(model)
    assert engine.cache.peak_blocks <= 11


def test_stop_ids_and_cancel_finish_early():
    model = tiny()
    ref = reference(model, PROMPTS[:1], [10])[0]
    engine = Engine(model)
    r = engine.submit(Request(PROMPTS[0], 10, stop_ids=(ref[2],)))
    c = engine.submit(Request(PROMPTS[1], 10))
    engine.step()
    engine.cancel(c)
    while engine.has_work:
        engine.step()
    assert r.output == ref[:ref.index(ref[2]) + 1] and r.finish_reason == "stop"
    assert c.finish_reason == "cancelled"


def test_sampled_requests_repeat_for_a_seed():
    model = tiny()
    runs = [Engine(model, max_batch=3).generate(PROMPTS, LENGTHS, temperature=1.0, seed=5)
            for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("request_, match", [
    (Request([1] * 40, 20), "exceeds the context"),
    (Request([], 3), "at least one token"),
    (Request([1], -1), "max_new_tokens must be >= 0"),
])
def test_submit_rejects_what_cannot_run(request_, match):
    with pytest.raises(ValueError, match=match):
        Engine(tiny()).submit(request_)


@pytest.mark.parametrize("bits", [8, 4])
def test_engine_serves_a_quantized_model_like_generate(bits):
    from companion.quantize import quantize

    qmodel = quantize(tiny(), bits=bits, group_size=16)
    assert Engine(qmodel, max_batch=3, block_size=4).generate(PROMPTS, LENGTHS) == reference(qmodel)


def test_a_sampling_error_fails_its_request_and_the_engine_goes_on():
    # temperature 1e-300 is 0 in float32: sampling raised "probability tensor contains inf/nan"
    # inside the engine thread, and every later request hung (issue 29).
    engine = Engine(tiny())
    bad = engine.submit(Request([1, 2, 3], 5, temperature=1e-300))
    good = engine.submit(Request([4, 5], 5))
    while engine.has_work:
        engine.step()
    assert bad.finish_reason == "error" and "RuntimeError" in bad.error
    assert good.finish_reason == "length" and len(good.output) == 5
    assert engine.errors == 1 and engine.cache.blocks_in_use == 0 and engine.reserved == 0
    assert engine.generate([PROMPTS[0]], 10) == reference(tiny(), PROMPTS[:1], [10])


def test_a_failed_step_fails_its_rows_frees_their_blocks_and_the_next_step_runs(monkeypatch):
    engine = Engine(tiny())
    reqs = [engine.submit(Request(p, 8)) for p in PROMPTS[:3]]
    engine.step()  # prefill: every row running
    monkeypatch.setattr(engine, "_forward", lambda rows: 1 / 0)
    assert engine.step() == 0
    assert [r.finish_reason for r in reqs] == ["error"] * 3
    assert "ZeroDivisionError" in reqs[0].error and engine.errors == 3
    assert not engine.running and engine.cache.blocks_in_use == 0 and engine.reserved == 0
    monkeypatch.undo()
    assert engine.generate([PROMPTS[1]], 3) == reference(tiny(), PROMPTS[1:2], [3])


def test_deadline_and_cancel_drop_waiting_and_running_requests():
    engine = Engine(tiny(), max_batch=1)
    running = engine.submit(Request([1, 2], 30, deadline=time.monotonic() + 3600))
    queued = engine.submit(Request([3, 4], 30, deadline=time.monotonic() - 1))
    cancelled = engine.submit(Request([5], 30))
    engine.cancel(cancelled)
    engine.step()
    assert queued.finish_reason == "timeout" and cancelled.finish_reason == "cancelled"
    running.deadline = time.monotonic() - 1
    while engine.has_work:
        engine.step()
    assert running.finish_reason == "timeout" and len(running.output) < 30
    assert engine.cache.blocks_in_use == 0 and engine.reserved == 0


def test_a_bounded_queue_refuses_with_queue_full():
    engine = Engine(tiny(), max_waiting=2)
    engine.submit(Request([1], 3))
    engine.submit(Request([2], 3))
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        engine.submit(Request([3], 3))


def test_static_policy_never_returns_more_than_max_new_tokens():
    # The static batch keeps finished rows computing; those tokens went into `output`, so a
    # server reading it returned max_tokens + 1 tokens (6 of 128 responses, issue 29).
    engine = Engine(tiny(), max_batch=4, policy="static")
    seen: dict[int, list[int]] = {}
    reqs = [engine.submit(Request(p, n, on_token=lambda r, t: seen.setdefault(r.id, []).append(t)))
            for p, n in zip(PROMPTS, LENGTHS)]
    while engine.has_work:
        engine.step()
        for r in reqs:
            assert len(r.output) <= r.max_new_tokens
    for r, n in zip(reqs, LENGTHS):
        assert len(r.output) == n and seen[r.id][:-1] == r.output and seen[r.id][-1] is None
    assert [r.output for r in reqs] == reference(tiny())


def test_health_reports_a_stalled_step():
    engine = Engine(tiny())
    assert engine.health()["state"] == "ok"
    engine.step_started = time.monotonic() - 5
    assert engine.health(stall_s=1)["state"] == "stalled"


# --- the scheduler: a memory budget, preemption, chunked and batched prefill, a prefix cache ---


def test_default_pool_is_smaller_than_max_batch_contexts_and_a_budget_sizes_it():
    model = tiny()
    per_seq = math.ceil(model.config.context_length / 4)
    assert Engine(model, max_batch=8, block_size=4).cache.allocator.num_blocks < 8 * per_seq
    e = Engine(model, block_size=4, kv_budget_bytes=10_000)
    assert e.cache.allocator.num_blocks == 10_000 // e.cache.bytes_per_block
    with pytest.raises(ValueError, match="less than one block"):
        Engine(model, kv_budget_bytes=10)


def test_a_pool_smaller_than_max_batch_contexts_still_runs_max_batch_rows():
    # Admission used to book prompt + max_new_tokens up front: 6 requests of 3 + 20 tokens booked
    # 6 blocks each, so a 16-block pool ran 2 rows at a time (issue 29).
    model = tiny()
    prompts, lengths = [[i + 1, 2, 3] for i in range(6)], [20] * 6
    engine = Engine(model, max_batch=6, block_size=4, num_blocks=16)
    assert engine.generate(prompts, lengths) == reference(model, prompts, lengths)
    assert engine.peak_rows == 6 and engine.cache.peak_blocks <= 16
    assert engine.cache.blocks_in_use == 0 and engine.cache.allocator.num_free == 16


def test_a_preempted_request_outputs_what_it_would_have_without_preemption():
    model = tiny()
    prompts, lengths = [[i + 1, 2, 3] for i in range(6)], [20] * 6
    small = Engine(model, max_batch=6, block_size=4, num_blocks=16)
    greedy = small.generate(prompts, lengths)
    assert small.preemptions > 0
    assert greedy == reference(model, prompts, lengths)
    # Sampled too: the recomputed row keeps its generator, so it draws the same tokens.
    sampled = Engine(model, max_batch=6, block_size=4, num_blocks=16).generate(
        prompts, lengths, temperature=1.0, seed=3)
    roomy = Engine(model, max_batch=6, block_size=4, num_blocks=60)
    assert sampled == roomy.generate(prompts, lengths, temperature=1.0, seed=3)
    assert roomy.preemptions == 0


def test_preemption_keeps_block_accounting_exact_with_cancels():
    model = tiny()
    engine = Engine(model, max_batch=6, block_size=4, num_blocks=16)
    reqs = [engine.submit(Request([i + 1, 2, 3], 20)) for i in range(6)]
    for _ in range(12):
        engine.step()
    engine.cancel(reqs[0])
    while engine.has_work:
        engine.step()
        held = sum(len(t) for t in engine.cache.tables.values())
        assert held >= engine.cache.blocks_in_use  # shared blocks are counted once in the pool
    assert engine.preemptions > 0 and engine.cache.blocks_in_use == 0
    assert not engine.cache.allocator.refs and engine.cache.allocator.num_free == 16


def test_prefix_blocks_are_shared_and_freed_only_at_refcount_zero():
    """block_size 4, 9 tokens: blocks for tokens 0-3 and 4-7 are full and cacheable; at most
    (9 - 1) // 4 = 2 blocks may match, the last token is always read again."""
    cache = PagedKVCache(1, 1, 2, block_size=4, num_blocks=6)
    tokens = list(range(9))
    cache.add_sequence(0)
    kv = torch.randn(1, 9, 2)
    cache.write_prefill(0, [kv], [kv])
    cache.register_prefix(0, tokens)
    cache.add_sequence(1)
    assert cache.match_prefix(1, tokens, (9 - 1) // 4) == 8
    shared = cache.tables[1]
    assert shared == cache.tables[0][:2] and all(cache.allocator.refs[b] == 2 for b in shared)
    cache.free_sequence(0)  # the first holder leaves: the shared blocks stay
    assert all(cache.allocator.refs[b] == 1 for b in shared) and cache.blocks_in_use == 2
    cache.free_sequence(1)  # the last one leaves: refcount 0, back in the pool but still cached
    assert cache.blocks_in_use == 0 and cache.allocator.num_free == 6
    cache.add_sequence(2)
    assert cache.match_prefix(2, tokens + [99], 2) == 8 and cache.tables[2] == shared
    assert cache.prefix_hits == 4 and cache.prefix_queries == 4
    cache.free_sequence(2)
    cache.add_sequence(3)
    cache.grow(3, 24)  # all six blocks: the cached ones are recycled and forgotten
    assert not cache.prefix and not cache.block_key
    cache.add_sequence(4)
    assert cache.match_prefix(4, tokens, 2) == 0


def test_prefix_cache_hits_a_shared_prompt_and_outputs_stay_exact():
    model = tiny()
    system = [5, 1, 7, 3, 9, 2, 8, 4, 6, 10, 11, 12]  # 12 tokens: 3 full blocks of 4
    prompts = [system + [13], system + [14, 15], system + [16]]
    engine = Engine(model, max_batch=4, block_size=4)
    first = engine.generate(prompts[:1], 5)  # reads and caches the shared blocks
    rest = engine.generate(prompts[1:], 5)
    assert first + rest == reference(model, prompts, [5] * 3)
    assert engine.cache.prefix_hits == 6 and engine.cache.prefix_queries == 3 + 3 + 3
    assert engine.cache.blocks_in_use == 0
    off = Engine(model, max_batch=4, block_size=4, prefix_cache=False)
    assert off.generate(prompts, 5) == first + rest and off.cache.prefix_hits == 0


def test_prompts_are_read_together_in_one_batched_forward(monkeypatch):
    engine = Engine(tiny(), max_batch=5, block_size=4)
    plans = []
    forward = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda plan: plans.append(
        [(r.id, n) for r, n in plan]) or forward(plan))
    reqs = [engine.submit(Request(p, n)) for p, n in zip(PROMPTS, LENGTHS)]
    engine.step()
    assert sorted(plans[0]) == [(r.id, len(r.prompt)) for r in reqs]  # every prompt, one forward
    while engine.has_work:
        engine.step()
    assert [r.output for r in reqs] == reference(tiny())


def test_chunked_prefill_never_stalls_a_running_decode(monkeypatch):
    model = tiny()
    engine = Engine(model, max_batch=2, block_size=4, num_blocks=24, max_step_tokens=8)
    plans = []
    forward = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda plan: plans.append(
        [(r, n) for r, n in plan]) or forward(plan))
    short = engine.submit(Request([1, 2], 30))
    engine.step()
    long = engine.submit(Request(list(range(1, 23)) * 2, 2))  # 44 tokens: six steps of 7
    plans.clear()
    while not long.output:
        before = len(short.output)
        engine.step()
        assert len(short.output) == before + 1  # the decode ran in every step
    assert len(plans) == math.ceil(44 / 7)
    assert all(sum(n for _, n in p) <= 8 and p[0] == (short, 1) for p in plans)
    while engine.has_work:
        engine.step()
    assert [short.output, long.output] == reference(model, [[1, 2], long.prompt], [30, 2])
