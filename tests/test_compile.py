"""model.compile=true: torch.compile of each block, same loss and the same checkpoints as eager."""

import pytest
import torch

from lmlab.kv_cache import KVCache
from lmlab.model import Transformer
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
    # decoding with a KV cache runs the blocks eagerly: the same logits
    cache_e, cache_c = KVCache.for_model(eager), KVCache.for_model(compiled)
    torch.testing.assert_close(compiled(batch[:, :5], cache_c).logits, eager(batch[:, :5], cache_e).logits)


def test_compile_is_off_by_default_and_keeps_the_state_dict():
    assert Transformer(model_cfg(SMALL))._compiled is None
    m = Transformer(model_cfg(SMALL + ["model.compile=true"]))  # compiles lazily, on first call
    assert m._compiled is not None and not any("_orig_mod" in k for k in m.state_dict())
