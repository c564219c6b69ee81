#!/usr/bin/env python3
"""llama.cpp counterpart of `graft bench` (through llama-cpp-python's low-level API).

Measures the same things, the same way, and prints one JSON line of the same shape:

  ppN  one batch of N tokens from an empty KV cache (split into n_batch chunks if N > n_batch),
       logits only for the last token
  tgN  N single-token decode steps from an empty KV cache
  tokens are the deterministic ids (i*7919+13) % n_vocab; n_ctx = max of all pp/tg sizes,
  n_batch = n_ubatch = min(n_ctx, 512); one warm-up pass (min(n_ctx,512) tokens, clear, 1 token)
  load_ms        time of the Llama() constructor (mmap + model load + context creation)
  model_load_ms  the llama_model_load_from_file part of it alone (closest to graft's load_ms)
  base_rss_mb    VmRSS of this interpreter after `import llama_cpp`, before loading the model
  peak_rss_mb    VmHWM of the process at the end
  adapters       per LoRA adapter (--lora / --lora-scaled, all active during the runs):
                 file, scale and load_ms (time of llama_adapter_lora_init); they are activated
                 with llama_set_adapters_lora before the warm-up

On machines with AMX, llama.cpp's default use_extra_bufts=True moves quantized weights into AMX
(and CPU_REPACK) buffers, which segfaults here; it is switched off by default (recorded as
"use_extra_bufts" in the output). --extra-bufts keeps llama.cpp's default.

Usage: python scripts/bench_llamacpp.py --model M [--threads N] [--pp 128,512] [--tg 64]
                                        [--reps 3] [--flash-attn] [--extra-bufts]
                                        [--lora A.gguf]... [--lora-scaled A.gguf S]...
Needs llama-cpp-python (pip install llama-cpp-python==0.3.36).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time

# llama-cpp-python imports numpy, whose OpenBLAS starts nproc-1 threads that spin for a while;
# ggml does not use them (set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()] if s.strip() else []


def bench_tokens(n: int, n_vocab: int) -> list[int]:
    return [(i * 7919 + 13) % n_vocab for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int_list, default=[128, 512])
    ap.add_argument("--tg", type=int_list, default=[64])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--extra-bufts", action="store_true",
                    help="keep llama.cpp's default use_extra_bufts=True (AMX/repack weight buffers)")
    ap.add_argument("--lora", action="append", default=[], metavar="A.gguf",
                    help="LoRA adapter active (scale 1) during the runs (repeatable)")
    ap.add_argument("--lora-scaled", action="append", nargs=2, default=[],
                    metavar=("A.gguf", "S"), help="LoRA adapter and scale (repeatable)")
    args = ap.parse_args()
    loras = [(p, 1.0) for p in args.lora] + [(p, float(s)) for p, s in args.lora_scaled]

    try:
        import importlib.metadata

        import llama_cpp
        from llama_cpp import llama_cpp as C
    except ImportError as e:
        print(f"bench_llamacpp.py: cannot import llama_cpp ({e}) with {sys.executable}; "
              "install it with: pip install llama-cpp-python==0.3.36", file=sys.stderr)
        return 3
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(llama_cpp, "__version__", None)
    base_rss_mb = status_mb("VmRSS")

    n_ctx = max(args.pp + args.tg + [1])
    n_batch = min(n_ctx, 512)

    # Llama() has no parameter for use_extra_bufts: patch the default model params it starts
    # from (as runtime/tests/fixtures/gen_reference.py does). Also time the model load alone.
    orig_params = C.llama_model_default_params
    orig_load = C.llama_model_load_from_file
    model_load_s = []

    def params():
        p = orig_params()
        if not args.extra_bufts:
            p.use_extra_bufts = False
        return p

    def timed_load(*a):
        t = time.perf_counter()
        r = orig_load(*a)
        model_load_s.append(time.perf_counter() - t)
        return r

    C.llama_model_default_params = params
    C.llama_model_load_from_file = timed_load
    try:
        t0 = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=args.model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
            n_threads=args.threads, n_threads_batch=args.threads, n_gpu_layers=0,
            flash_attn=args.flash_attn, logits_all=False, seed=0, verbose=False,
        )
        load_ms = (time.perf_counter() - t0) * 1e3
    finally:
        C.llama_model_default_params = orig_params
        C.llama_model_load_from_file = orig_load

    ctx = llm.ctx
    adapters_out = []
    if loras:
        ptrs = []
        for path, scale in loras:
            t = time.perf_counter()
            ad = C.llama_adapter_lora_init(llm.model, path.encode())
            ms = (time.perf_counter() - t) * 1e3
            if not ad:
                print(f"bench_llamacpp.py: llama_adapter_lora_init failed for {path}",
                      file=sys.stderr)
                return 4
            ptrs.append(ad)
            adapters_out.append({"file": path, "scale": scale, "load_ms": ms,
                                 "file_bytes": os.path.getsize(path)})
        n = len(ptrs)
        arr = (C.llama_adapter_lora_p_ctypes * n)(*ptrs)
        scales = (ctypes.c_float * n)(*[s for _, s in loras])
        rc = C.llama_set_adapters_lora(ctx, arr, n, scales)
        if rc != 0:
            print(f"bench_llamacpp.py: llama_set_adapters_lora returned {rc}", file=sys.stderr)
            return 4
    mem = C.llama_get_memory(ctx)
    n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(llm.model))
    batch = C.llama_batch_init(n_batch, 0, 1)

    def clear():
        C.llama_memory_clear(mem, True)

    def decode(tokens: list[int], pos0: int = 0) -> None:
        """Evaluate `tokens` at positions pos0.. in chunks of n_batch; logits for the last only."""
        n = len(tokens)
        for s in range(0, n, n_batch):
            chunk = tokens[s:s + n_batch]
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = pos0 + s + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            batch.logits[len(chunk) - 1] = 1 if s + len(chunk) == n else 0
            batch.n_tokens = len(chunk)
            rc = C.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        C.llama_synchronize(ctx)

    def decode_one(tok: int, pos: int) -> None:
        batch.token[0] = tok
        batch.pos[0] = pos
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = 1
        batch.n_tokens = 1
        rc = C.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        C.llama_synchronize(ctx)

    # Warm-up (page in the weights, size the compute buffers), as graft does.
    decode(bench_tokens(n_batch, n_vocab))
    clear()
    decode(bench_tokens(1, n_vocab))

    results = []
    for n in args.pp:
        toks = bench_tokens(n, n_vocab)
        rates = []
        for _ in range(args.reps):
            clear()
            t = time.perf_counter()
            decode(toks)
            rates.append(n / (time.perf_counter() - t))
        results.append({"test": f"pp{n}", "tokens_per_s": rates})
    for n in args.tg:
        toks = bench_tokens(n, n_vocab)
        rates = []
        for _ in range(args.reps):
            clear()
            t = time.perf_counter()
            for pos, tok in enumerate(toks):
                decode_one(tok, pos)
            rates.append(n / (time.perf_counter() - t))
        results.append({"test": f"tg{n}", "tokens_per_s": rates})

    fa_type = llm.context_params.flash_attn_type
    out = {
        "engine": "llama.cpp",
        "model": args.model,
        "threads": args.threads,
        "flash_attn": args.flash_attn,
        "flash_attn_type": {C.LLAMA_FLASH_ATTN_TYPE_AUTO: "auto",
                            C.LLAMA_FLASH_ATTN_TYPE_DISABLED: "disabled",
                            C.LLAMA_FLASH_ATTN_TYPE_ENABLED: "enabled"}.get(fa_type, fa_type),
        "use_extra_bufts": bool(llm.model_params.use_extra_bufts),
        "n_ctx": C.llama_n_ctx(ctx),
        "n_batch": C.llama_n_batch(ctx),
        "n_ubatch": C.llama_n_ubatch(ctx),
        "load_ms": load_ms,
        "model_load_ms": model_load_s[0] * 1e3 if model_load_s else None,
        "base_rss_mb": base_rss_mb,
        "peak_rss_mb": status_mb("VmHWM"),
        "adapters": adapters_out,
        "llama_cpp_python": version,
        "system_info": C.llama_print_system_info().decode(errors="replace").strip(),
        "python": sys.executable,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "results": results,
    }
    C.llama_batch_free(batch)
    print(json.dumps(out), flush=True)
    # Skip interpreter teardown (llama-cpp-python's __del__ chain can be slow or noisy).
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
