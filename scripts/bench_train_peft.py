#!/usr/bin/env python3
"""LoRA training throughput and memory of PEFT + torch on the CPU: the reference point for
`graft train` (see scripts/bench_train.py, which runs both).

The base is SmolLM2-135M-Instruct as graft sees it (.cache/models/SmolLM2-135M-Instruct.F32.gguf),
turned into an HF LlamaForCausalLM in float32 with the GGUF -> HF conversion of
runtime/tests/fixtures/peft/gen_peft_reference.py (imported, not copied). PEFT cannot train over a
Q4_1 GGUF, so this is always the F32 model.

Training mirrors `graft train --method lora` on a plain-text file:
  * tokens: the whole file tokenized with the GGUF's own tokenizer (transformers' GGUF tokenizer
    loader; no BOS -- SmolLM2's GGUF has add_bos = false, which is what graft uses), cut into
    `--ctx`-token chunks; only full chunks are used (scripts/bench_train.py feeds both tools a text
    whose token count is a multiple of ctx). Alternatively `--tokens F.json|.npy` gives the ids.
  * LoraConfig(r, lora_alpha, the 7 projections, dropout 0), AdamW(lr, weight_decay 0),
    linear warm-up + cosine schedule, global grad-norm clip 1.0 (graft's defaults), batch 1
    sequence per step, loss = mean causal-LM cross entropy over the chunk (labels = input_ids).
  * `--warmup-steps` untimed steps (default 2), then `--steps` timed steps (default 20).

Reports one JSON object: tokens/s over the timed steps (256 tokens per step at ctx 256, the same
count graft reports), per-step seconds, losses, and memory from /proc/self/status:
  rss_after_imports_mb  VmRSS of the interpreter after importing torch/transformers/peft/gguf
                        (and its RssAnon/RssFile split: a CUDA torch wheel maps large libraries);
  peak_rss_load_mb      VmHWM after building the model (the GGUF -> torch conversion peak);
  peak_rss_train_mb     VmHWM over the training phase only (reset via /proc/self/clear_refs = 5
                        after the model is built; the fairest, i.e. lowest, PEFT number);
  peak_rss_mb           max of the two (the whole process, comparable to graft's own figure).

Usage: $(scripts/peft_env.sh) scripts/bench_train_peft.py --data F.txt [--steps 20] ...
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import sys
import time
from pathlib import Path

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402,F401
import transformers  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "tests" / "fixtures" / "peft"))
import gen_peft_reference as ref  # noqa: E402  (load_gguf: GGUF -> HF config + state dict)

DEFAULT_MODEL = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.F32.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def mb(kb: int) -> float:
    return round(kb / 1024.0, 1)


def reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def gguf_tokenizer(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)


def load_tokens(args) -> list[int]:
    if args.tokens:
        p = Path(args.tokens)
        ids = np.load(p).tolist() if p.suffix == ".npy" else json.loads(p.read_text())
        return [int(i) for i in ids]
    tok = gguf_tokenizer(args.model)
    return tok.encode(Path(args.data).read_text(), add_special_tokens=False)


def build_model(model_path: Path, attn: str) -> LlamaForCausalLM:
    """ref.load_gguf's config and weights, without the extra random-init copy of the reference
    script's build_model (meta-device construction + assign=True): lower load peak for PEFT."""
    cfg, sd = ref.load_gguf(model_path)
    cfg._attn_implementation = attn
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    res = model.load_state_dict(sd, strict=False, assign=True)
    assert not res.unexpected_keys and set(res.missing_keys) <= {"lm_head.weight"}, res
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # buffers (the rotary inv_freq) were created on meta: rebuild that module on the CPU
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.model.rotary_emb = LlamaRotaryEmbedding(cfg)
    for n, b in model.named_buffers():
        assert not b.is_meta, n
    for n, p in model.named_parameters():
        assert not p.is_meta, n
    del sd
    gc.collect()
    return model


def lr_at(step: int, lr: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine to 0 (step is 0-based)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, help="plain-text training file")
    ap.add_argument("--tokens", help="token ids (.json list or .npy) instead of --data")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-warmup", type=int, default=10, help="LR warm-up steps (graft --warmup)")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()
    if not args.data and not args.tokens:
        ap.error("--data or --tokens")

    rss_imports = proc_status_kb("VmRSS")
    rss_imports_split = {k: mb(proc_status_kb(k)) for k in ("RssAnon", "RssFile")}
    t_imports = time.perf_counter() - T_START
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    ids = load_tokens(args)
    n_chunks = len(ids) // args.ctx
    if n_chunks == 0:
        sys.exit(f"{len(ids)} tokens: fewer than ctx {args.ctx}")
    chunks = [torch.tensor([ids[i * args.ctx:(i + 1) * args.ctx]], dtype=torch.long) for i in range(n_chunks)]
    order = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    base = build_model(args.model, args.attn)
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=TARGETS, lora_dropout=0.0,
                     bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    load_s = time.perf_counter() - t0
    gc.collect()
    peak_load = proc_status_kb("VmHWM")
    rss_loaded = proc_status_kb("VmRSS")
    hwm_reset = reset_peak_rss()

    total = args.warmup_steps + args.steps
    step_s, losses = [], []
    perm = []
    for step in range(total):
        if not perm:
            perm = list(order.permutation(n_chunks))
        x = chunks[perm.pop()]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.lr, args.lr_warmup, total)
        t = time.perf_counter()
        out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        del out
        step_s.append(time.perf_counter() - t)
        losses.append(loss)

    timed = step_s[args.warmup_steps:]
    tokens = args.ctx * len(timed)
    peak_train = proc_status_kb("VmHWM")
    res = {
        "tool": "peft",
        "model": str(args.model),
        "data": str(args.data or args.tokens),
        "n_tokens_file": len(ids),
        "n_chunks": n_chunks,
        "ctx": args.ctx,
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": TARGETS,
        "trainable_params": n_params,
        "threads": args.threads,
        "attn": args.attn,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "tokens_per_s": tokens / sum(timed),
        "tokens_per_s_incl_warmup": args.ctx * len(step_s) / sum(step_s),
        "step_s_median": float(np.median(timed)),
        "step_s": [round(s, 4) for s in step_s],
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": [round(v, 4) for v in losses],
        "import_s": round(t_imports, 2),
        "load_s": round(load_s, 2),
        "rss_after_imports_mb": mb(rss_imports),
        "rss_after_imports_split_mb": rss_imports_split,
        "rss_after_load_mb": mb(rss_loaded),
        "rss_end_split_mb": {k: mb(proc_status_kb(k)) for k in ("RssAnon", "RssFile")},
        "peak_rss_load_mb": mb(peak_load),
        "peak_rss_train_mb": mb(peak_train) if hwm_reset else None,
        "peak_rss_mb": mb(max(peak_load, peak_train)),
        "versions": {p: importlib.metadata.version(p) for p in ["torch", "transformers", "peft"]},
        "torch_cuda_build": torch.version.cuda,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
