"""model.compile=true: torch.compile of each block and of the decoding step; the same loss, the
same tokens and the same checkpoints as eager."""

import pytest
import torch

from lmlab.kv_cache import KVCache
from lmlab.model import Transformer
from lmlab.sampling import stream_tokens
from tests.conftest import TINY, model_cfg

SMALL = TINY + ["model.vocab_size=64"]


@pytest.mark.slow  # compiling takes ~30-90 s on 2 busy CPU cores
def test_compiled_loss_and_gradients_equal_eager():
    torch.manual_seed(0)
    eager = Transformer(model_cfg(SMALL))
    compiled = Transformer(model_cfg(SMALL + ["model.compile=true"]))
    compiled.load_state_dict(eager.state_dict())  # the same keys: no _orig_mod. prefixes
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    batch = torch.randint(0, 64, (4, 17))
    losses = []
    for m in (eager, compiled):
        ce, _ = m.loss(batch[:, :-1], batch[:, 1:])
        ce.backward()
        losses.append(ce.item())
    # fused kernels reorder fp32 arithmetic: equal to 1e-5 relative, not bit for bit
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    # a prompt with a KV cache runs the blocks eagerly: the same logits
    cache_e, cache_c = KVCache.for_model(eager), KVCache.for_model(compiled)
    torch.testing.assert_close(compiled(batch[:, :5], cache_c).logits, eager(batch[:, :5], cache_e).logits)


def test_compile_is_off_by_default_and_keeps_the_state_dict():
    assert Transformer(model_cfg(SMALL))._compiled is None
    m = Transformer(model_cfg(SMALL + ["model.compile=true"]))  # compiles lazily, on first call
    assert m._compiled is not None and not any("_orig_mod" in k for k in m.state_dict())


@pytest.mark.parametrize("variant,max_graphs,half", [
    (["model/position=rope", "model/attention=gqa"], 4, True),
    # MoE dispatch is data-dependent: the graph breaks around it, more graphs, the same tokens;
    # its routing statistics live on the model's own layers, so it decodes from the fp32 weights
    pytest.param(["model/ffn=moe", "model/position=alibi", "model.attention.window=4"], 24, False,
                 marks=pytest.mark.slow),  # ~30 s of compiling on 2 cores
])
def test_compiled_decoding_generates_the_eager_tokens(variant, max_graphs, half):
    """Decoding steps run one compiled step over a static cache: greedy tokens equal eager ones
    for a batch of prompts of different lengths, past the context (the cache restarts), with
    the step compiled once per kind of batch, not once per step; for these one- and two-row
    batches on CPU the step reads fp16 copies of the weights (eager decoding, the fp32 ones)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Transformer(model_cfg(SMALL + variant)).eval()
    compiled = Transformer(model_cfg(SMALL + variant + ["model.compile=true"])).eval()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.compiled_decoding and KVCache.for_model(compiled).static
    assert not eager.compiled_decoding and not KVCache.for_model(eager).static
    calls = []
    step = compiled._compiled_step
    compiled._compiled_step = lambda *a: calls.append(a[3] is not None) or step(*a)
    torch._dynamo.utils.counters.clear()
    g = torch.Generator().manual_seed(0)
    padded = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (3, 5)]
    single = [torch.randint(0, 64, (4,), generator=g).tolist()]
    for prompts in (padded, single):  # context 16, 24 new tokens: the cache restarts
        got = list(stream_tokens(compiled, prompts, 24, temperature=0))
        assert got == list(stream_tokens(eager, prompts, 24, temperature=0)), prompts
    assert len(calls) >= 40  # the compiled step ran the single-token steps
    assert set(calls) == {half}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= max_graphs


@pytest.mark.parametrize("compile", [None, True, False])
def test_a_checkpoint_loads_compiled_or_not_on_request(compile, tmp_path):
    """generate.py's ``compile``: null keeps the checkpoint's model.compile (here true), true or
    false replaces it; the weights are the checkpoint's either way."""
    from lmlab.checkpoint import load_model
    from lmlab.module import LanguageModule

    trained = LanguageModule(model=model_cfg(SMALL + ["model.compile=true"]))
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(trained.hparams), "state_dict": trained.state_dict()}, path)
    loaded = load_model(path, "cpu", compile=compile)
    assert loaded.compiled_decoding is (compile is not False)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key.removeprefix("model.")], value), key
