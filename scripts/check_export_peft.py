#!/usr/bin/env python3
"""End-to-end check of `graft export-peft`: a LoRA trained by graft, exported to PEFT, loaded
with PeftModel.from_pretrained into the HF model, must behave like the GGUF adapter in graft.

  1. `graft train` a LoRA on the F32 SmolLM2 GGUF (a few steps, constant LR, no warm-up, so
     the adapter visibly moves the logits), then `graft export-peft` it.
  2. HF LlamaForCausalLM from the same F32 GGUF (runtime/tests/fixtures/peft/
     gen_peft_reference.py: load_gguf + build_model), then PeftModel.from_pretrained(export dir).
  3. Prompt: the `english` prompt of .cache/references/reference/smollm2-f32.json (scripts/references.sh), token ids
     fed directly (no BOS). Compared:
       * 16 greedy tokens: `graft generate --adapter A.gguf --temperature 0` vs PEFT (argmax,
         full recompute each step) -- must be identical;                          [PASS/FAIL]
       * perplexity of a held-out text (first --ppl-tokens tokens, windows of 256 as
         `graft perplexity` does) with the adapter: graft vs PEFT relative difference must be
         below --ppl-tol (graft uses an f16 K/V cache; the same figure without the adapter is
         printed as the noise floor);                                              [PASS/FAIL]
       * graft with the exported PEFT directory as --adapter must give the same greedy tokens
         (round trip through graft's own PEFT import).                             [PASS/FAIL]
       * the logits at the last prompt position: `top_logits --all` (graft with the GGUF adapter,
         f32 K/V cache) vs PEFT, max abs difference below --logit-tol (1e-2);     [PASS/FAIL]
     For scale: max |PEFT logits - HF base logits| at the last prompt position (the adapter's
     effect; the check means nothing if this is ~0), and whether the adapter changes the base's
     greedy continuation.
Also printed: lora_alpha / r of the export vs adapter.lora.alpha of the GGUF, and the ratio of
the exported B to the GGUF B for one unpermuted target (v_proj of layer 0), since the effective
scale alpha/r * B*A is what must match.

Usage: $(scripts/peft_env.sh) scripts/check_export_peft.py [--steps 5] [--keep DIR]
Exit status 0 on PASS, 1 on FAIL.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "tests" / "fixtures" / "peft"))
import gen_peft_reference as ref  # noqa: E402

GRAFT = ROOT / "target" / "release" / "graft"
F32 = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.F32.gguf"
REF_JSON = ROOT / ".cache" / "references" / "reference" / "smollm2-f32.json"  # scripts/references.sh
N_GREEDY = 16


def sh(cmd: list) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def graft_greedy(adapter: Path, text: str, threads: int) -> dict:
    out = sh([GRAFT, "generate", "--model", F32, "--adapter", adapter, "--prompt", text, "--temperature", "0",
              "--max-tokens", N_GREEDY, "--ignore-eos", "--threads", threads, "--json"])
    return json.loads(out)


def graft_ppl(adapter: Path | None, file: Path, n: int, threads: int) -> dict:
    cmd = [GRAFT, "perplexity", "--model", F32, "--file", file, "--ctx", 256, "--max-tokens", n,
           "--threads", threads, "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    return json.loads(sh(cmd))


@torch.no_grad()
def hf_ppl(model, ids: list[int], ctx: int = 256) -> float:
    """graft perplexity's windows: starts 0, ctx-1, 2(ctx-1), ...; each scores its tokens 1.."""
    nll, cnt = 0.0, 0
    for start in range(0, len(ids) - 1, ctx - 1):
        w = ids[start:start + ctx]
        lg = model(input_ids=torch.tensor([w]), use_cache=False).logits[0].double()
        lp = torch.log_softmax(lg[:-1], dim=-1)
        nll -= float(lp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum())
        cnt += len(w) - 1
    return math.exp(nll / cnt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache/data/sotu/1941_franklin_d_roosevelt_d.txt")
    ap.add_argument("--eval", type=Path, default=ROOT / ".cache/data/sotu/1942_franklin_d_roosevelt_d.txt")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ppl-tokens", type=int, default=512)
    ap.add_argument("--ppl-tol", type=float, default=2e-3, help="max relative perplexity difference")
    ap.add_argument("--logit-tol", type=float, default=1e-2, help="max abs last-position logit difference")
    ap.add_argument("--adapter", type=Path, help="use this GGUF LoRA instead of training one")
    ap.add_argument("--keep", type=Path, help="keep the adapter and the PEFT dir here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    prompt = next(p for p in json.loads(REF_JSON.read_text())["prompts"] if p["name"] == "english")
    ids = prompt["tokens"]

    work = args.keep or Path(tempfile.mkdtemp(prefix="check_export_peft."))
    work.mkdir(parents=True, exist_ok=True)
    gg = args.adapter or work / "trained.gguf"
    if not args.adapter:
        sh([GRAFT, "train", "--model", F32, "--method", "lora", "--data", args.data, "--out", gg,
            "--steps", args.steps, "--ctx", args.ctx, "--rank", 8, "--alpha", 16,
            "--targets", "q,k,v,o,gate,up,down", "--lr", args.lr, "--warmup", 0, "--schedule", "constant",
            "--seed", 0, "--threads", args.threads, "--json"])
    peft_dir = work / "peft"
    sh([GRAFT, "export-peft", "--model", F32, "--adapter", gg, "-o", peft_dir])

    # --- scale bookkeeping -------------------------------------------------------------------
    import gguf
    from safetensors.numpy import load_file

    rd = gguf.GGUFReader(str(gg))
    g_alpha = float(rd.fields["adapter.lora.alpha"].contents())
    gb = next(t for t in rd.tensors if t.name == "blk.0.attn_v.weight.lora_b")
    gb = np.array(gb.data, dtype=np.float32).reshape([int(x) for x in reversed(gb.shape)])
    g_rank = min(gb.shape)
    pcfg = json.loads((peft_dir / "adapter_config.json").read_text())
    st = load_file(str(peft_dir / "adapter_model.safetensors"))
    pb_key = next(k for k in st if "layers.0.self_attn.v_proj.lora_B" in k)
    pb = st[pb_key].astype(np.float32)
    nz = np.abs(gb) > 1e-12
    b_ratio = float(np.median(pb.reshape(gb.shape)[nz] / gb[nz])) if nz.any() else float("nan")
    print(f"GGUF: alpha {g_alpha:g}, rank {g_rank} -> scale {g_alpha / g_rank:g}; "
          f"PEFT export: lora_alpha {pcfg['lora_alpha']:g}, r {pcfg['r']} -> scale {pcfg['lora_alpha'] / pcfg['r']:g}; "
          f"exported B / GGUF B (layer 0 v_proj, median) = {b_ratio:.6g}; "
          f"effective scale ratio export/GGUF = {b_ratio * (pcfg['lora_alpha'] / pcfg['r']) / (g_alpha / g_rank):.6g}")

    # --- HF / PEFT side ----------------------------------------------------------------------
    from peft import PeftModel

    cfg, sd = ref.load_gguf(F32)
    base = ref.build_model(cfg, sd)
    del sd
    base_logits = ref.last_logits(base, ids)
    base_greedy, _ = ref.greedy(base, ids, N_GREEDY)
    eval_text = args.eval.read_text()
    tok_out = sh([GRAFT, "perplexity", "--model", F32, "--file", args.eval, "--ctx", 256, "--max-tokens",
                  args.ppl_tokens, "--threads", args.threads, "--json"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(F32.parent), gguf_file=F32.name)
    eval_ids = tok.encode(eval_text, add_special_tokens=False)[: args.ppl_tokens]
    assert tok.encode(prompt["text"], add_special_tokens=False) == ids, "tokenizer mismatch on the prompt"
    g_base_ppl = json.loads(tok_out)
    assert g_base_ppl["tokens"] == len(eval_ids) - 1, (g_base_ppl, len(eval_ids))
    hf_base_ppl = hf_ppl(base, eval_ids)

    model = PeftModel.from_pretrained(base, str(peft_dir))
    model.eval()
    peft_logits = ref.last_logits(model, ids)
    peft_greedy, peft_margins = ref.greedy(model, ids, N_GREEDY)
    peft_ppl = hf_ppl(model, eval_ids)
    effect = float(np.max(np.abs(peft_logits - base_logits)))

    # --- graft side ----------------------------------------------------------------------------
    g = graft_greedy(gg, prompt["text"], args.threads)
    assert g["prompt_tokens"] == ids, ("graft tokenized the prompt differently", g["prompt_tokens"])
    g_rt = graft_greedy(peft_dir, prompt["text"], args.threads)
    g_ppl = graft_ppl(gg, args.eval, args.ppl_tokens, args.threads)
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "top_logits"], cwd=ROOT, check=True)
    tl = sh([ROOT / "target" / "release" / "examples" / "top_logits", F32, "--adapter", gg, "--all", *ids])
    graft_logits = np.array([float(x) for x in tl.split()], dtype=np.float64)
    logit_diff = float(np.max(np.abs(graft_logits - peft_logits)))
    ok_logits = logit_diff < args.logit_tol

    ok_greedy = g["tokens"] == peft_greedy
    ok_rt = g_rt["tokens"] == g["tokens"]
    rel = abs(g_ppl["perplexity"] - peft_ppl) / peft_ppl
    rel_base = abs(g_base_ppl["perplexity"] - hf_base_ppl) / hf_base_ppl
    ok_ppl = rel < args.ppl_tol
    result = {
        "adapter": str(gg),
        "peft_dir": str(peft_dir),
        "prompt_tokens": ids,
        "adapter_effect_max_abs_logit_diff": effect,
        "graft_vs_peft_max_abs_logit_diff": logit_diff,
        "adapter_changes_base_greedy": base_greedy != peft_greedy,
        "base_greedy_hf": base_greedy,
        "peft_greedy": peft_greedy,
        "peft_greedy_min_margin": min(peft_margins),
        "graft_greedy_gguf_adapter": g["tokens"],
        "graft_greedy_peft_dir_adapter": g_rt["tokens"],
        "greedy_identical": ok_greedy,
        "roundtrip_identical": ok_rt,
        "ppl_tokens": len(eval_ids) - 1,
        "ppl_base": {"graft": g_base_ppl["perplexity"], "hf": hf_base_ppl, "rel_diff": rel_base},
        "ppl_adapter": {"graft": g_ppl["perplexity"], "peft": peft_ppl, "rel_diff": rel},
        "peft_text": tok.decode(peft_greedy),
        "graft_text": g["text"],
    }
    print(json.dumps(result, indent=1))
    verdict = ok_greedy and ok_ppl and ok_rt and ok_logits and effect > 0.1
    print(f"{'PASS' if verdict else 'FAIL'}: greedy {N_GREEDY} tokens graft==PEFT: {ok_greedy}; "
          f"adapter ppl graft {g_ppl['perplexity']:.4f} vs PEFT {peft_ppl:.4f} (rel {rel:.2e}, tol {args.ppl_tol:g}; "
          f"base rel {rel_base:.2e}); last-position logits max|graft - PEFT| {logit_diff:.2e} "
          f"(tol {args.logit_tol:g}); PEFT-dir round trip in graft: {ok_rt}; adapter effect max|dlogit| {effect:.3f}"
          f"{'' if effect > 0.1 else ' (too small to mean anything)'}")
    sys.exit(0 if verdict else 1)


if __name__ == "__main__":
    main()
