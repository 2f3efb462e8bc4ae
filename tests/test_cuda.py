"""The CUDA path against the CPU path (marked gpu: skipped without CUDA).

The CPU path is proven exact elsewhere (executor vs transformers, reasoner fast paths vs plain
ones). Here the same tiny models run on the GPU in float32, with TF32 off, and must give the
CPU's logits within a float32 tolerance, and the reasoner the CPU's outputs and answers under
dense, static, stage-wise and scheduled (SkipDecode-style) plans, including the header cache,
batched questions and multi-token cloze scoring, which index on the logits' device.
"""
from __future__ import annotations

import copy

import pytest
import torch
from test_reasoner import assert_same
from tiny_models import ARCHS, PROMPT, all_logits, assert_close, tiny_model
from tiny_reasoner import CAPS, QUESTIONS, STAGEWISE, STATIC, reasoner

from baselines.skipdecode import schedule_plan
from litestage_bench.engine.executor import SkipExecutor
from litestage_bench.engine.plan import DENSE, SkipPlan, SkipSet, StagePlan

pytestmark = pytest.mark.gpu

SCHEDULED = SkipPlan({s: schedule_plan(2, CAPS[s]) for s in CAPS}, "skipdecode-k2")


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    # TF32 matmuls differ from float32 ones by ~1e-3: the comparison is of float32 on both devices
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("plan", [StagePlan(), StagePlan.static(SkipSet.of(attn=[1], ffn=[2]))], ids=["dense", "static"])
def test_executor_logits_on_cuda_equal_cpu(arch, plan):
    cpu = tiny_model(arch)
    gpu = copy.deepcopy(cpu).cuda()
    assert_close(all_logits(SkipExecutor(gpu), PROMPT, plan).cpu(), all_logits(SkipExecutor(cpu), PROMPT, plan))


@pytest.mark.parametrize("plan", [DENSE, STATIC, STAGEWISE, SCHEDULED], ids=lambda p: p.name)
def test_reasoner_on_cuda_equals_cpu(model, tokenizer, plan):
    on_cpu = reasoner(model, tokenizer)
    on_gpu = reasoner(copy.deepcopy(model).cuda(), tokenizer)
    assert on_gpu.ex.device.type == "cuda"
    for q in QUESTIONS:
        assert_same(on_gpu.solve(q, plan), on_cpu.solve(q, plan))


@pytest.mark.parametrize("plan", [DENSE, STAGEWISE], ids=lambda p: p.name)
def test_cuda_fast_paths_equal_plain_ones(model, tokenizer, plan):
    gpu = copy.deepcopy(model).cuda()
    fast, plain = reasoner(gpu, tokenizer), reasoner(gpu, tokenizer, header_cache=False, reuse_kv=False)
    batched = fast.solve_batch(QUESTIONS, plan)
    for q, b in zip(QUESTIONS, batched):
        assert_same(b, plain.solve(q, plan))
