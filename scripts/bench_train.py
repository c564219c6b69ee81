#!/usr/bin/env python3
"""LoRA training: `graft train` vs PEFT + torch (scripts/bench_train_peft.py), CPU, same data,
rank, alpha, targets, ctx, steps and threads. Each run is its own process; runs are sequential
and interleaved (graft Q4_1, PEFT, graft F32) for `--rounds` rounds. Prints a markdown table.

Data: the text file is tokenized with the GGUF's tokenizer (transformers' GGUF loader, no BOS as
SmolLM2's GGUF says) and cut to the longest prefix whose token count is a multiple of ctx, so
every training sequence of both tools has exactly ctx tokens (graft would otherwise train on the
short tail chunk now and then). graft's token count of that file is verified with
`graft perplexity` (it scores n - 1 tokens).

Timing: both tools run `warmup + steps` optimizer steps; tokens/s is over the last `steps`.
graft prints a cumulative tokens/s after each step, so its elapsed time at step k is
k * ctx / tokens_per_s_k and the timed window is elapsed(warmup + steps) - elapsed(warmup).
graft's own summary figure (all steps, first included) is reported too.

Memory: peak RSS of each process from the kernel (ru_maxrss of the command alone, see LAUNCH; whole process: load
included), plus graft's own `peak_rss_mb` and PEFT's training-phase-only peak.

Quiet machine: before each run the script waits (up to --quiet-timeout s) until the CPUs are
idle; during each run it records the CPU time used by other processes ("foreign CPU", in cores).

Usage: python3 scripts/bench_train.py [--data F.txt] [--steps 20] [--rounds 2]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import AVX2_GRAFT_BUILD, default_graft  # scripts/bench.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
GRAFT = ROOT / "target" / "release" / "graft"
# `--isa avx2`: what an AVX2-only CPU (AMD Zen 2/3, Intel before AVX-512) runs, on a CPU that has
# more. graft comes from the AVX2 build that bench.py also uses (ggml built for AVX2,
# matrixmultiply kept off its AVX-512 kernel; graft's own pulp kernels stop at AVX2 + FMA), and
# torch, MKL and oneDNN are capped at AVX2 by their documented environment variables.
GRAFT_AVX2 = Path(default_graft("avx2"))
TORCH_AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def peft_python() -> Path:
    """$GRAFT_PEFT_PYTHON, else the venv of scripts/peft_env.sh (made if missing)."""
    if os.environ.get("GRAFT_PEFT_PYTHON"):
        return Path(os.environ["GRAFT_PEFT_PYTHON"])
    out = subprocess.run([str(ROOT / "scripts" / "peft_env.sh")], stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip())


MODELS = ROOT / ".cache" / "models"
Q4 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
F32 = MODELS / "SmolLM2-135M-Instruct.F32.gguf"
TARGETS = "q,k,v,o,gate,up,down"


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v), idle


def busy_cores(dt: float = 2.0) -> float:
    t0, i0 = cpu_times()
    time.sleep(dt)
    t1, i1 = cpu_times()
    ncpu = os.cpu_count() or 1
    return ncpu * (1 - (i1 - i0) / max(1, t1 - t0))


def wait_quiet(limit_s: float, threshold: float = 0.15) -> float:
    t = time.time()
    while True:
        b = busy_cores()
        if b < threshold:
            return b
        if time.time() - t > limit_s:
            print(f"warning: machine not quiet after {limit_s:.0f}s ({b:.2f} cores busy); running anyway",
                  file=sys.stderr)
            return b
        print(f"waiting for a quiet machine ({b:.2f} cores busy)", file=sys.stderr)
        time.sleep(10)


# The child's peak RSS must not include this script's: Linux keeps a process's peak RSS across
# exec, and a child spawned from here (fork or vfork) starts as an image of this interpreter,
# which holds transformers and the tokenized data (~725 MB, more than graft's whole peak). So a
# small interpreter forks the measured command and reports that grandchild's own ru_maxrss
# (its peak over at most the small interpreter's ~10 MB, then the command's).
LAUNCH = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, st, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(ru.ru_maxrss))
rc = os.waitstatus_to_exitcode(st)
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Runs `cmd` (through LAUNCH, for its own peak RSS) with `env` added to ours."""
    s0, i0 = cpu_times()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe, \
            tempfile.NamedTemporaryFile("r", suffix=".maxrss") as fm:
        p = subprocess.Popen([sys.executable, "-S", "-c", LAUNCH, fm.name, *map(str, cmd)],
                             stdout=fo, stderr=fe, text=True, env={**os.environ, **(env or {})})
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        s1, i1 = cpu_times()
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
        maxrss_kb = int(fm.read().strip() or 0)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({rc}):\n{err[-3000:]}")
    clk = os.sysconf("SC_CLK_TCK")
    busy_s = ((s1 - s0) - (i1 - i0)) / clk
    child_cpu = ru.ru_utime + ru.ru_stime
    return {
        "stdout": out,
        "stderr": err,
        "wall_s": wall,
        "maxrss_mb": maxrss_kb / 1024.0,
        "child_cpu_s": child_cpu,
        "foreign_cores": max(0.0, busy_s - child_cpu) / wall,
    }


def prepare_data(src: Path, ctx: int, outdir: Path) -> tuple[Path, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(F32.parent), gguf_file=F32.name)
    ids = tok.encode(src.read_text(), add_special_tokens=False)
    k = len(ids) // ctx
    while k > 0:
        text = tok.decode(ids[: k * ctx])
        if tok.encode(text, add_special_tokens=False) == ids[: k * ctx]:
            break
        k -= 1
    if k == 0:
        sys.exit(f"{src}: cannot cut to a multiple of {ctx} tokens")
    out = outdir / f"{src.stem}.{k * ctx}tok.txt"
    out.write_text(text)
    # graft's own count: perplexity over the file scores n - 1 tokens
    r = subprocess.run([str(GRAFT), "perplexity", "--model", str(Q4), "--file", str(out), "--ctx", "512",
                        "--max-tokens", str(10 * k * ctx), "--threads", "2", "--json"],
                       capture_output=True, text=True, check=True)
    n_graft = json.loads(r.stdout)["tokens"] + 1
    if n_graft != k * ctx:
        sys.exit(f"graft tokenizes {out} to {n_graft} tokens, transformers to {k * ctx}")
    return out, k


# The other methods, as scripts/sotu_learning.sh trains them (graft over Q4_1 only: PEFT has
# no DiaBlo, WeGeFT or LoPA trainer to compare with).
METHODS = {
    "lora": ["--method", "lora"],
    "diablo": ["--method", "diablo", "--blocks", "64"],
    "diablo+galore": ["--method", "diablo", "--blocks", "16", "--galore-rank", "4"],
    "wegeft": ["--method", "wegeft"],
    "lopa": ["--method", "lopa", "--rank", "4", "--virtual-tokens", "16"],
}


def graft_run(model: Path, data: Path, args, outdir: Path, tag: str, method: str = "lora") -> dict:
    total = args.warmup_steps + args.steps
    margs = METHODS[method]
    if "--rank" not in margs:
        margs = margs + ["--rank", str(args.rank)]
    if method in ("lora", "wegeft"):
        margs = margs + ["--alpha", str(args.alpha)]
    cmd = [str(GRAFT), "train", "--model", str(model), *margs, "--data", str(data),
           "--out", str(outdir / f"{tag}.gguf"), "--steps", str(total), "--ctx", str(args.ctx),
           "--batch", "1", "--targets", TARGETS,
           "--lr", str(args.lr), "--seed", "0", "--threads", str(args.threads),
           "--save-every", str(10 * total), "--json"]
    r = run_child(cmd)
    lines = [json.loads(l) for l in r["stdout"].splitlines() if l.startswith("{")]
    steps = [l for l in lines if "step" in l and "loss" in l]
    summary = lines[-1]
    elapsed = {s["step"]: s["step"] * args.ctx / s["tokens_per_s"] for s in steps}
    # every sequence is ctx tokens (checked): the summary's token total must say so
    n_tok = summary["tokens_per_s"] * summary["seconds"]
    assert abs(n_tok - total * args.ctx) < 1.0, (n_tok, total * args.ctx)
    w = args.warmup_steps
    dt = elapsed[total] - (elapsed[w] if w else 0.0)
    return {
        "tool": "graft",
        "method": method,
        "memory_mb": summary.get("memory_mb"),
        "model": model.name,
        "tokens_per_s": args.steps * args.ctx / dt,
        "tokens_per_s_graft_summary": summary["tokens_per_s"],
        "first_step_s": elapsed[1],
        "loss_first": steps[0]["loss"],
        "loss_last": steps[-1]["loss"],
        "peak_rss_mb": r["maxrss_mb"],
        "peak_rss_mb_graft": summary.get("peak_rss_mb"),
        "wall_s": r["wall_s"],
        "foreign_cores": r["foreign_cores"],
    }


def peft_run(data: Path, args) -> dict:
    cmd = [str(peft_python()), str(ROOT / "scripts" / "bench_train_peft.py"), "--model", str(F32), "--data", str(data),
           "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--ctx", str(args.ctx),
           "--rank", str(args.rank), "--alpha", str(args.alpha), "--lr", str(args.lr),
           "--threads", str(args.threads), "--attn", args.attn]
    r = run_child(cmd, TORCH_AVX2_ENV if args.isa == "avx2" else None)
    j = json.loads([l for l in r["stdout"].splitlines() if l.startswith("{")][-1])
    if args.isa == "avx2" and j["torch_cpu_capability"] != "AVX2":
        sys.exit(f"torch ignored ATEN_CPU_CAPABILITY=avx2 (it runs {j['torch_cpu_capability']})")
    j.update({"model": F32.name + " (HF float32)", "peak_rss_mb_self": j["peak_rss_mb"],
              "peak_rss_mb": r["maxrss_mb"], "wall_s": r["wall_s"], "foreign_cores": r["foreign_cores"]})
    return j


def isa_note(isa: str) -> str:
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    have = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    if isa == "avx2":
        return (f"AVX2 + FMA only (the CPU has {have}: ggml built with GRAFT_GGML_ISA=avx2, torch run with "
                + " ".join(f"{k}={v}" for k, v in TORCH_AVX2_ENV.items()) + ")")
    return f"all the CPU has ({have}; ggml -march=native, torch's own dispatch)"


def main() -> None:
    # The data preparation tokenizes with transformers: run in the PEFT environment (made by
    # scripts/peft_env.sh if missing) when this python lacks it.
    try:
        import transformers  # noqa: F401
    except ImportError:
        py = peft_python()
        os.execv(str(py), [str(py), __file__, *sys.argv[1:]])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache/data/sotu/1941_franklin_d_roosevelt_d.txt")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="PEFT attention kernel")
    ap.add_argument("--no-f32", action="store_true", help="skip the graft-over-F32 rows")
    ap.add_argument("--methods", default="lora",
                    help="comma-separated graft methods to time over Q4_1 (" + ",".join(METHODS) + ")")
    ap.add_argument("--quiet-timeout", type=float, default=600)
    ap.add_argument("--json-out", type=Path, help="write all results here")
    ap.add_argument("--isa", default="native", choices=["native", "avx2"],
                    help="avx2: both tools limited to AVX2 + FMA (graft from target/avx2, built by "
                         + AVX2_GRAFT_BUILD + "; torch, MKL and oneDNN capped by environment)")
    args = ap.parse_args()
    global GRAFT
    if args.isa == "avx2":
        GRAFT = GRAFT_AVX2
        if not GRAFT.exists():
            sys.exit(f"{GRAFT} is missing: build it with `{AVX2_GRAFT_BUILD}`")

    st = GRAFT.stat()
    newer = [str(p.relative_to(ROOT)) for p in (ROOT / "runtime" / "src").rglob("*.rs") if p.stat().st_mtime > st.st_mtime]
    if newer:
        print(f"warning: {GRAFT} is older than {', '.join(newer[:5])}{' ...' if len(newer) > 5 else ''}",
              file=sys.stderr)
    graft_sha = hashlib.sha256(GRAFT.read_bytes()).hexdigest()[:16]

    with tempfile.TemporaryDirectory(prefix="bench_train.") as td:
        outdir = Path(td)
        data, n_chunks = prepare_data(args.data, args.ctx, outdir)
        print(f"data: {args.data.name} cut to {n_chunks} x {args.ctx} tokens", file=sys.stderr)
        runs = []
        for rnd in range(args.rounds):
            others = [m for m in args.methods.split(",") if m and m != "lora"]
            plan = ([("graft", Q4, "lora"), ("peft", None, "lora")]
                    + ([] if args.no_f32 else [("graft", F32, "lora")])
                    + [("graft", Q4, m) for m in others])
            for tool, model, method in plan:
                quiet = wait_quiet(args.quiet_timeout)
                if tool == "graft":
                    r = graft_run(model, data, args, outdir, f"r{rnd}-{model.stem}-{method}", method)
                else:
                    r = peft_run(data, args)
                r["round"] = rnd + 1
                r["busy_cores_before"] = round(quiet, 3)
                runs.append(r)
                print(f"round {rnd + 1} {tool:5s} {r['model']:40s} {r['tokens_per_s']:7.1f} tok/s  "
                      f"peak {r['peak_rss_mb']:7.1f} MB  foreign {r['foreign_cores']:.2f} cores", file=sys.stderr)

    def rows(tool, model_pred):
        return [r for r in runs if r["tool"] == tool and model_pred(r["model"])]

    lora = [r for r in runs if r.get("method", "lora") == "lora"]
    groups = [
        ("graft, Q4_1 base", [r for r in rows("graft", lambda m: m == Q4.name) if r in lora]),
        ("graft, F32 base", [r for r in rows("graft", lambda m: m == F32.name) if r in lora]),
        (f"PEFT {runs[1]['versions']['peft']} + torch {runs[1]['versions']['torch']}, F32 base ({args.attn})",
         rows("peft", lambda m: True)),
    ]
    groups = [g for g in groups if g[1]]
    def clean(rs):  # runs that shared the CPUs with another process (> 0.1 core) are left out
        return [r for r in rs if r["foreign_cores"] < 0.1] or rs

    def fmt(rs, key, nd):
        return ", ".join(f"{r[key]:.{nd}f}{'*' if r['foreign_cores'] >= 0.1 else ''}" for r in rs)

    peft = groups[-1][1]
    peft_tps = statistics.median(r["tokens_per_s"] for r in clean(peft))
    peft_rss = statistics.median(r["peak_rss_mb"] for r in clean(peft))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nLoRA training, SmolLM2-135M-Instruct, r={args.rank} alpha={args.alpha:g}, targets {TARGETS}, "
          f"ctx {args.ctx}, batch 1, {args.threads} threads, {args.steps} timed steps after {args.warmup_steps} "
          f"warm-up steps, {args.rounds} interleaved rounds (median; per-round values in brackets; "
          f"* = another process used > 0.1 core during that run, left out of the median). "
          f"CPU: {cpu}, instructions: {isa_note(args.isa)}. graft {graft_sha} ({datetime.datetime.fromtimestamp(st.st_mtime):%Y-%m-%d %H:%M}).\n")
    print("| trainer | base weights | tokens/s | peak RSS (MB) | tokens/s vs PEFT | peak RSS vs PEFT | final loss |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, rs in groups:
        mt = statistics.median(r["tokens_per_s"] for r in clean(rs))
        mr = statistics.median(r["peak_rss_mb"] for r in clean(rs))
        base = name.split(", ")[1].split(" ")[0] if name.startswith("graft") else "F32 (HF float32)"
        who = "graft" if name.startswith("graft") else name.split(", ")[0]
        print(f"| {who} | {base} | {mt:.1f} [{fmt(rs, 'tokens_per_s', 1)}] | "
              f"{mr:.0f} [{fmt(rs, 'peak_rss_mb', 0)}] | {mt / peft_tps:.2f}x | {mr / peft_rss:.2f}x | "
              f"{statistics.median(r['loss_last'] for r in rs):.3f} |")
    p0 = peft[0]
    print(f"\nPEFT memory detail (median): bare interpreter after imports "
          f"{statistics.median(r['rss_after_imports_mb'] for r in peft):.0f} MB "
          f"(anon {p0['rss_after_imports_split_mb']['RssAnon']:.0f} / file {p0['rss_after_imports_split_mb']['RssFile']:.0f}; "
          f"torch build cuda={p0['torch_cuda_build']}), "
          f"model-load peak {statistics.median(r['peak_rss_load_mb'] for r in peft):.0f} MB, "
          f"training-phase peak {statistics.median(r['peak_rss_train_mb'] or 0 for r in peft):.0f} MB. "
          f"graft self-reported peak: "
          + ", ".join(f"{r['model']} {r['peak_rss_mb_graft']:.0f} MB" for r in runs if r["tool"] == "graft" and r["round"] == 1)
          + f". graft summary tokens/s (incl. first steps): "
          + ", ".join(f"{r['model']} {r['tokens_per_s_graft_summary']:.1f}" for r in runs if r["tool"] == "graft")
          + f". Max foreign CPU during a run: {max(r['foreign_cores'] for r in runs):.2f} cores.")
    print("Goal: graft >= 1.0x PEFT tokens/s at <= 0.5x PEFT peak memory (then 2x).")
    methods = [m for m in METHODS if any(r.get("method") == m and r["model"] == Q4.name for r in runs)]
    if len(methods) > 1:
        print(f"\nEvery method over the Q4_1 base (same data, ctx {args.ctx}, {args.threads} threads; ratios "
              f"against PEFT's LoRA run above; memory columns from graft's own accounting, MB):\n")
        print("| method | tokens/s | peak RSS (MB) | vs PEFT LoRA tok/s | vs PEFT LoRA RSS | trainable params MB "
              "| optimizer MB (plain Adam) | compute buffer MB | Q4_1 split MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in methods:
            rs = [r for r in runs if r.get("method") == m and r["model"] == Q4.name and r["tool"] == "graft"]
            mt = statistics.median(r["tokens_per_s"] for r in clean(rs))
            mr = statistics.median(r["peak_rss_mb"] for r in clean(rs))
            mem = rs[0]["memory_mb"] or {}
            print(f"| {m} | {mt:.1f} | {mr:.0f} | {mt / peft_tps:.2f}x | {mr / peft_rss:.2f}x | "
                  f"{mem.get('adapter', 0):.2f} | {mem.get('optimizer', 0):.2f} ({mem.get('optimizer_plain_adam', 0):.2f}) | "
                  f"{mem.get('compute_buffer', 0):.0f} | {mem.get('q4_1_split', 0):.0f} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "graft_sha256_16": graft_sha, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
