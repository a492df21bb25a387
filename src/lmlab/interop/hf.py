"""Hugging Face checkpoints in and out: GPT-2 (``GPT2LMHeadModel``) and Llama (``LlamaForCausalLM``).

A Hugging Face checkpoint directory holds ``config.json`` and ``model.safetensors`` (or sharded
``model-*.safetensors`` with an index). Importing reads them directly, without ``transformers``;
exporting writes the same two files, which ``transformers`` then loads with ``from_pretrained``,
and GPT-2's tokenizer files beside them (``hf_tokenizer.py``; with ``transformers`` installed).

- ``load_hf(path) -> (cfg, state_dict)``: the lmlab model config dict and an lmlab state dict;
- ``import_hf(path) -> Transformer``: the built model with those weights;
- ``export_hf(model, path, layout=None, tokenizer="gpt2")``: write ``model`` as a GPT-2 or Llama
  checkpoint, with the tokenizer the model was trained with. The layout is guessed from the
  components when not given; a component with no Hugging Face equivalent in that layout (ALiBi,
  MoE, a sliding window, QK-norm, post-norm, ...) is refused with a one-line ValueError naming it.

The per-layout mappings live in gpt2.py and llama.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmlab.interop.exportable import guess_layout
from lmlab.interop.gpt2 import gpt2_in, gpt2_out
from lmlab.interop.hf_tokenizer import check_name, save_tokenizer
from lmlab.interop.llama import llama_in, llama_out
from lmlab.model.transformer import Transformer

LAYOUTS = ("gpt2", "llama")
__all__ = ["LAYOUTS", "export_hf", "guess_layout", "import_hf", "load_checkpoint", "load_hf", "save_checkpoint"]


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors weights (convert .bin checkpoints first)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_hf(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a Hugging Face GPT-2 or Llama checkpoint directory into (lmlab config, state dict)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json; expected a Hugging Face checkpoint directory")
    hf = json.loads((path / "config.json").read_text())
    kind = hf.get("model_type")
    if kind == "gpt2":
        return gpt2_in(hf, _read_weights(path))
    if kind == "llama":
        return llama_in(hf, _read_weights(path))
    raise ValueError(f"model_type {kind!r} is not supported; valid choices: gpt2, llama")


def import_hf(path: str | Path) -> Transformer:
    cfg, state = load_hf(path)
    model = Transformer(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_hf(model: Transformer, path: str | Path, layout: str | None = None,
              tokenizer: str | None = "gpt2") -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory (config.json, model.safetensors)
    with the files of ``tokenizer`` (the ``data.tokenizer`` it was trained with): GPT-2's, where
    transformers is installed; for None or another encoding, none. One log line says which."""
    from safetensors.torch import save_file

    check_name(tokenizer)
    layout = layout or guess_layout(model)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown {layout!r}; valid choices: {', '.join(LAYOUTS)}")
    hf, sd = (gpt2_out if layout == "gpt2" else llama_out)(model)
    dtype = model.tok_emb.weight.dtype
    hf["dtype"] = hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    save_file({k: v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()},
              str(path / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(path, tokenizer, hf, model.context_length)
    return path


def save_checkpoint(model: Transformer, path: str | Path, **module_kwargs) -> Path:
    """Save ``model`` as a checkpoint of its weights that ``LanguageModule.load_from_checkpoint``,
    ``generate.py`` and ``evaluate.py`` read; it holds no optimizer state, so ``train.py`` has no
    run in it to resume (lmlab.resume_settings refuses it)."""
    import lightning

    from lmlab.module import LanguageModule

    module = LanguageModule(model=model.cfg, **module_kwargs)
    module.model.load_state_dict(model.state_dict())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def load_checkpoint(path: str | Path) -> Transformer:
    """The Transformer of an lmlab (Lightning) checkpoint, on the CPU."""
    from lmlab.checkpoint import load_model

    return load_model(path, "cpu")

