#!/usr/bin/env python3
"""Compare graft with llama.cpp (llama-cpp-python) on one model: pp/tg speed, load time, peak RSS.

Runs `graft bench` and scripts/bench_llamacpp.py as separate processes, interleaved
(graft, llama.cpp, graft, llama.cpp, ... for --rounds rounds) so that machine noise hits both.
Per test it reports the median tokens/s over all reps of all rounds, the median load time and
the largest peak RSS, and the ratio graft/llama.cpp.

Usage:
  python3 scripts/bench.py --model M [--threads N] [--pp 128,512] [--tg 64] [--reps 3]
                           [--rounds 3] [--flash-attn] [--extra-bufts] [--cpu-repack] [--graft PATH]
                           [--python PATH] [--json OUT] [--markdown]
                           [--max-noise PCT] [--retries N] [--quiet-wait S]
                           [--adapter A.gguf]... [--graft-only] [--variant SPEC]...
                           [--busy N]

--adapter (repeatable) makes every listed adapter active (scale 1) in both engines: graft gets
--adapter A, llama.cpp --lora A (so LoRA adapters only, unless --graft-only). The table then
also has the adapter load time per file (graft: registry load; llama.cpp:
llama_adapter_lora_init) and, with two or more, graft's adapter_switch_us.
--graft-only skips llama.cpp (for DiaBlo, WeGeFT, ... adapters llama.cpp cannot load).
--variant SPEC (repeatable, implies --graft-only) compares graft configurations with each
other instead: SPEC is `none` (no adapter) or comma-separated adapter files, optionally
prefixed with `LABEL=`; the variants run interleaved (v1, v2, v3, v1, v2, ...) and the table
gives each one's tok/s and its change against the first variant.

--busy N runs N CPU-bound processes (a busy loop each) throughout, for both engines: speed
under load, as on a phone or laptop running other work (implies --max-noise -1). graft runs
only as many threads as there are free cores (GRAFT_ADAPTIVE_THREADS=0 turns that off, to compare).

--python is the interpreter that has llama-cpp-python; default: $GRAFT_REF_PYTHON, else the venv
that `scripts/references.sh --env` makes (llama-cpp-python 0.3.36 built for this CPU, cached under
~/.cache/graft; built on first use, ~15 min on 2 cores). --graft defaults to $GRAFT_BIN, else
<repo>/target/release/graft. Do not run other heavy work on the machine while it runs: OpenMP
threads that spin-wait make both engines collapse (10x) under CPU contention. bench.py measures,
for every run, the CPU time other processes used meanwhile; a run where they used more than
--max-noise % of the CPUs is discarded and rerun (after waiting for a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LLAMA_SCRIPT = HERE / "bench_llamacpp.py"
INSTALL_HINT = "pip install llama-cpp-python==0.3.36"


def die(msg: str, code: int = 2) -> None:
    print(f"bench.py: {msg}", file=sys.stderr)
    sys.exit(code)


# --isa avx2: both engines built for an AVX2-only x86-64 CPU (AMD Zen 2/3, Intel before
# AVX-512), measured on a CPU that has more.
AVX2_GRAFT_BUILD = ("GRAFT_GGML_ISA=avx2 MMTEST_FEATURE=sse2,avx,avx2,fma CARGO_TARGET_DIR=target/avx2 "
                    "cargo build --release -p graft --bin graft")


def default_python(isa: str = "native") -> str:
    """$GRAFT_REF_PYTHON, else the llama-cpp-python venv of scripts/references.sh (made if missing;
    with isa "avx2", the one built for AVX2 only)."""
    env = os.environ.get("GRAFT_REF_PYTHON")
    if env and isa == "native":
        return env
    flag = "--env-avx2" if isa == "avx2" else "--env"
    out = subprocess.run([str(HERE / "references.sh"), flag], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        die(f"scripts/references.sh {flag} could not make the llama-cpp-python environment")
    return out.stdout.strip()


def default_graft(isa: str = "native") -> str:
    if isa == "avx2":
        return str(ROOT / "target" / "avx2" / "release" / "graft")
    return os.environ.get("GRAFT_BIN") or str(ROOT / "target" / "release" / "graft")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def n_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...; busy = all but idle and iowait
    v = [int(x) for x in fields[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def busy_pct(interval: float = 1.0) -> float | None:
    """How busy the machine is over `interval` seconds, in percent of all CPUs."""
    b0, t0 = cpu_busy_s(), time.monotonic()
    time.sleep(interval)
    b1 = cpu_busy_s()
    if b0 is None or b1 is None:
        return None
    return (b1 - b0) / ((time.monotonic() - t0) * n_cpus()) * 100


def wait_quiet(max_wait_s: float, threshold: float = 10.0) -> float | None:
    """Wait (up to max_wait_s) until the machine is less than `threshold`% busy; return the
    last busy percentage seen."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_pct()
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        busy = busy_pct()
    return busy


def run_json(cmd: list[str], what: str) -> dict:
    """Run `cmd`, return the last JSON line of its stdout; die with its stderr on failure.

    Adds "foreign_cpu_pct": CPU time used by other processes while it ran, as a percentage of
    the machine's capacity (wall time x CPUs): a noise indicator."""
    b0, c0, t0 = cpu_busy_s(), os.times(), time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b1, c1, t1 = cpu_busy_s(), os.times(), time.monotonic()
    foreign = None
    if b0 is not None and b1 is not None and t1 > t0:
        child = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
        foreign = max(0.0, (b1 - b0) - child) / ((t1 - t0) * n_cpus()) * 100
    if p.returncode != 0:
        hint = ""
        if what == "llama.cpp" and p.returncode < 0:
            hint = (f"\n(llama.cpp died with signal {-p.returncode}; if you passed --extra-bufts, "
                    "the AMX/repack weight buffers are the likely cause: run without it)")
        die(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}{hint}", 1)
    for line in reversed(p.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            out = json.loads(line)
            out["foreign_cpu_pct"] = foreign
            out["wall_s"] = t1 - t0
            return out
    die(f"{what} printed no JSON line: {' '.join(cmd)}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}", 1)
    raise AssertionError


def check_python(python: str) -> str:
    """Return the llama-cpp-python version the interpreter has, or exit with how to install it."""
    code = ("import importlib.metadata, llama_cpp\n"
            "try: print(importlib.metadata.version('llama-cpp-python'))\n"
            "except Exception: print(getattr(llama_cpp, '__version__', '?'))\n")
    try:
        p = subprocess.run([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    except FileNotFoundError:
        die(f"python interpreter not found: {python} (set --python or GRAFT_REF_PYTHON)")
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        die(f"cannot import llama_cpp with {python}: {last}\n"
            f"install it into that interpreter with: {python} -m {INSTALL_HINT}\n"
            f"(or point --python / GRAFT_REF_PYTHON at an interpreter that has it)")
    return p.stdout.strip()


def spread_pct(round_medians: list[float], med: float) -> float:
    """Half the range of the per-round medians, relative to the overall median (percent)."""
    if len(round_medians) < 2 or med == 0:
        return 0.0
    return (max(round_medians) - min(round_medians)) / 2 / med * 100


def summarize(runs: list[dict]) -> dict:
    """Aggregate one engine's runs: per test median tok/s over all reps of all rounds."""
    tests: dict[str, dict] = {}
    order: list[str] = []
    for run in runs:
        for r in run["results"]:
            t = r["test"]
            if t not in tests:
                tests[t] = {"all": [], "round_medians": []}
                order.append(t)
            tests[t]["all"].extend(r["tokens_per_s"])
            tests[t]["round_medians"].append(statistics.median(r["tokens_per_s"]))
    out_tests = {}
    for t in order:
        med = statistics.median(tests[t]["all"])
        out_tests[t] = {
            "median_tokens_per_s": med,
            "spread_pct": spread_pct(tests[t]["round_medians"], med),
            "min": min(tests[t]["all"]),
            "max": max(tests[t]["all"]),
            "n": len(tests[t]["all"]),
        }

    def med_of(key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def max_of(key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return max(vals) if vals else None

    return {
        "tests": out_tests,
        "order": order,
        "load_ms": med_of("load_ms"),
        "model_load_ms": med_of("model_load_ms"),
        "peak_rss_mb": max_of("peak_rss_mb"),
        "base_rss_mb": med_of("base_rss_mb"),
    }


def fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def table_rows(g: dict, l: dict) -> list[list[str]]:
    rows = []
    for t in g["order"]:
        gt, lt = g["tests"][t], l["tests"].get(t)
        if lt is None:
            continue
        rows.append([f"{t} (tok/s, higher is better)",
                     f"{gt['median_tokens_per_s']:.1f} ±{gt['spread_pct']:.0f}%",
                     f"{lt['median_tokens_per_s']:.1f} ±{lt['spread_pct']:.0f}%",
                     ratio(gt["median_tokens_per_s"], lt["median_tokens_per_s"])])
    rows.append(["load ms (lower is better)¹", fmt(g["load_ms"]), fmt(l["load_ms"]),
                 ratio(g["load_ms"], l["load_ms"])])
    if l.get("model_load_ms") is not None:
        rows.append(["model load ms only (lower is better)²", fmt(g["load_ms"]),
                     fmt(l["model_load_ms"]), ratio(g["load_ms"], l["model_load_ms"])])
    rows.append(["peak RSS MiB, whole process (lower is better)", fmt(g["peak_rss_mb"]),
                 fmt(l["peak_rss_mb"]), ratio(g["peak_rss_mb"], l["peak_rss_mb"])])
    if l.get("base_rss_mb") is not None and l.get("peak_rss_mb") is not None:
        own = l["peak_rss_mb"] - l["base_rss_mb"]
        rows.append(["peak RSS MiB, minus Python interpreter³ (lower is better)",
                     fmt(g["peak_rss_mb"]), fmt(own), ratio(g["peak_rss_mb"], own)])
    return rows


FOOTNOTES = [
    "tok/s: median over all reps of all rounds; ± is half the range of the per-round medians.",
    "Ratio column = graft / llama.cpp: above 1 is better for graft in tok/s rows, "
    "below 1 is better for graft in load-time and RSS rows.",
    "¹ graft: Model::load (open, mmap, validate, tokenizer); llama.cpp: the whole Llama() "
    "constructor (model load + context creation). llama.cpp maps the file with MAP_POPULATE "
    "(pre-faults the weights), graft maps it lazily, so graft pays the page-in in its warm-up.",
    "² llama.cpp: llama_model_load_from_file alone.",
    "³ llama.cpp's peak RSS minus the RSS of the bare interpreter after `import llama_cpp`.",
]


def print_plain(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))


def print_markdown(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def adapter_load_ms(runs: list[dict]) -> dict[str, float]:
    """Median load time per adapter file over all runs."""
    per: dict[str, list[float]] = {}
    for run in runs:
        for a in run.get("adapters") or []:
            per.setdefault(a["file"], []).append(a["load_ms"])
    return {f: statistics.median(v) for f, v in per.items()}


def switch_us(runs: list[dict]) -> float | None:
    vals = [r["adapter_switch_us"] for r in runs if r.get("adapter_switch_us") is not None]
    return statistics.median(vals) if vals else None


def adapter_rows(graft_runs: list[dict], llama_runs: list[dict]) -> list[list[str]]:
    rows = []
    ga, la = adapter_load_ms(graft_runs), adapter_load_ms(llama_runs)
    for f, ms in ga.items():
        rows.append([f"adapter load ms, {Path(f).name} (lower is better)", fmt(ms, 2),
                     fmt(la.get(f), 2), ratio(ms, la.get(f))])
    sw = switch_us(graft_runs)
    if sw is not None:
        rows.append(["adapter switch µs, graft set_adapters (lower is better)", fmt(sw, 3),
                     "n/a", "n/a"])
    return rows


def graft_only_rows(g: dict, runs: list[dict]) -> list[list[str]]:
    rows = [[f"{t} (tok/s)", f"{g['tests'][t]['median_tokens_per_s']:.1f} "
             f"±{g['tests'][t]['spread_pct']:.0f}%"] for t in g["order"]]
    rows.append(["load ms", fmt(g["load_ms"])])
    rows.append(["peak RSS MiB", fmt(g["peak_rss_mb"])])
    for f, ms in adapter_load_ms(runs).items():
        rows.append([f"adapter load ms, {Path(f).name}", fmt(ms, 2)])
    sw = switch_us(runs)
    if sw is not None:
        rows.append(["adapter switch µs", fmt(sw, 3)])
    return rows


def emit_table(markdown: bool, header: list[str], rows: list[list[str]],
               notes: list[str]) -> None:
    if markdown:
        print_markdown(header, rows)
        print()
        for n in notes:
            print(f"{n}  ")
    else:
        print_plain(header, rows)
        print()
        for n in notes:
            print(n)


def run_variants(args, graft: str, graft_version: str, model: Path, common: list[str],
                 variants: list[tuple[str, list[str]]]) -> int:
    """graft-only: several adapter configurations compared with the first. Speed: one graft
    process per round runs every configuration rep by rep (`graft bench --variant`), so each
    rep of a configuration has a partner rep of the first taken moments apart; the overhead is
    the median of those paired ratios. Memory and adapter load time: one process per
    configuration after the rounds."""
    cmd = [graft, "bench"] + common
    for label, files in variants:
        cmd += ["--variant", f"{label}={','.join(files) if files else 'none'}"]
    busy = None if args.busy else busy_pct()
    if busy is not None and busy > 10:
        print(f"bench.py: warning: the machine is {busy:.0f}% busy before starting; "
              "results will be noisy (stop other work first)", file=sys.stderr)
    runs: list[dict] = []
    discarded = []
    t0 = time.time()
    for r in range(args.rounds):
        for attempt in range(args.retries + 1):
            if args.max_noise is not None:
                wait_quiet(args.quiet_wait)
            print(f"round {r + 1}/{args.rounds}: graft, {len(variants)} variants interleaved ...",
                  file=sys.stderr, flush=True)
            out = run_json(cmd, "graft")
            f = out.get("foreign_cpu_pct")
            if args.max_noise is None or f is None or f <= args.max_noise \
                    or attempt == args.retries:
                runs.append(out)
                break
            print(f"  other processes used {f:.0f}% of the CPUs during it: discarded, "
                  "running again", file=sys.stderr, flush=True)
            discarded.append({"round": r + 1, **out})
    # Memory and load time, each configuration in a process of its own (one rep).
    own: list[dict] = []
    one_rep = common[:common.index("--reps")] + ["--reps", "1"] + common[common.index("--reps") + 2:]
    for label, files in variants:
        c = [graft, "bench"] + one_rep
        for f_ in files:
            c += ["--adapter", f_]
        print(f"memory: graft [{label}] ...", file=sys.stderr, flush=True)
        own.append(run_json(c, "graft"))
    elapsed = time.time() - t0
    foreign = [x["foreign_cpu_pct"] for x in runs if x.get("foreign_cpu_pct") is not None]
    print(f"machine:  {cpu_model()}, nproc {n_cpus()}")
    print(f"model:    {model}")
    print(f"threads:  {args.threads}, flash_attn: {args.flash_attn}, {args.rounds} rounds x "
          f"{args.reps} reps, {len(variants)} graft variants interleaved rep by rep in one "
          f"process per round ({elapsed:.0f} s)")
    print(f"versions: {graft_version}")
    if args.busy:
        print(f"load:     {args.busy} CPU-bound busy loop(s) ran throughout (speed under load)")
    elif foreign:
        print(f"noise:    other processes used up to {max(foreign):.1f}% of the CPUs during a kept "
              f"run ({len(discarded)} noisy run(s) discarded and rerun)")
    for label, files in variants:
        print(f"variant:  {label}: {' '.join(files) if files else '(no adapter)'}")
    print()
    tests = [t["test"] for t in runs[0]["variants"][0]["results"]]
    # rates[v][t] = per round, the list of rep rates
    rates = [[[run["variants"][v]["results"][ti]["tokens_per_s"] for run in runs]
              for ti in range(len(tests))] for v in range(len(variants))]
    header = ["test"] + [label for label, _ in variants]
    rows = []
    summary = []
    for ti, t in enumerate(tests):
        row = [f"{t} (tok/s, higher is better)"]
        for v in range(len(variants)):
            per_round = [statistics.median(x) for x in rates[v][ti]]
            med = statistics.median([x for rr in rates[v][ti] for x in rr])
            cell = f"{med:.1f} ±{spread_pct(per_round, med):.0f}%"
            entry = {"variant": variants[v][0], "test": t, "median_tokens_per_s": med}
            if v > 0:
                paired = sorted(b / x - 1 for rb, rv in zip(rates[0][ti], rates[v][ti])
                                for b, x in zip(rb, rv))
                q = len(paired) // 4
                mid = statistics.median(paired)
                cell += f" ({mid * 100:+.1f}% time/token, IQR {paired[q] * 100:+.0f}..{paired[-1 - q] * 100:+.0f})"
                entry["paired_overhead"] = mid
                entry["paired_ratios"] = paired
            row.append(cell)
            summary.append(entry)
        rows.append(row)
    rows.append(["peak RSS MiB (own process)"] + [fmt(o.get("peak_rss_mb")) for o in own])
    rows.append(["adapter load ms (sum of files)"]
                + [fmt(sum(a["load_ms"] for a in o.get("adapters", [])), 2) for o in own])
    notes = [FOOTNOTES[0], "(+x% time/token) = the median over all reps of the paired ratio "
             "(first column's rep / this column's rep taken right after it) - 1: the adapter's "
             "overhead; IQR = the middle half of those ratios."]
    emit_table(args.markdown, header, rows, notes)
    if args.json:
        args.json.write_text(json.dumps({
            "variants": [{"label": lb, "adapters": fs} for lb, fs in variants],
            "summary": summary, "runs": runs, "own_process": own,
            "discarded_runs": discarded}, indent=2) + "\n")
    return 0

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GGUF model file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", default="128,512", help="prompt lengths, comma-separated")
    ap.add_argument("--tg", default="64", help="generation lengths, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each test per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved graft/llama.cpp rounds")
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--extra-bufts", action="store_true",
                    help="let llama.cpp use its extra (AMX/repack) weight buffers "
                         "(its default; segfaults on some AMX machines)")
    ap.add_argument("--cpu-repack", action="store_true",
                    help="graft runs the weights ggml has repacked kernels for from a repacked copy "
                         "(`graft bench --cpu-repack`), the counterpart of llama.cpp's --extra-bufts")
    ap.add_argument("--max-noise", type=float, default=5.0,
                    help="rerun a run during which other processes used more than this %% of "
                         "the CPUs (default 5; negative: never rerun)")
    ap.add_argument("--retries", type=int, default=3, help="reruns allowed per run (default 3)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="seconds to wait for a quiet machine before each run (default 120)")
    ap.add_argument("--graft", default=None,
                    help="graft binary (default: $GRAFT_BIN, else target/release/graft; with "
                         "--isa avx2 target/avx2/release/graft)")
    ap.add_argument("--isa", default="native", choices=["native", "avx2"],
                    help="avx2: graft and llama.cpp both built for AVX2 + FMA only (graft by "
                         + AVX2_GRAFT_BUILD + "; llama.cpp by scripts/references.sh --env-avx2)")
    ap.add_argument("--python", default=None,
                    help="python interpreter with llama-cpp-python")
    ap.add_argument("--json", type=Path, help="write all raw results and the summary here")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--adapter", action="append", default=[], metavar="A.gguf",
                    help="adapter active during the runs, both engines (repeatable)")
    ap.add_argument("--graft-only", action="store_true",
                    help="run graft only (no llama.cpp), e.g. for non-LoRA adapters")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="run N CPU-bound busy loops during every run (speed under load)")
    ap.add_argument("--variant", action="append", default=[], metavar="SPEC",
                    help="graft configuration to compare: none | [LABEL=]A.gguf[,B.gguf...] "
                         "(repeatable; implies --graft-only)")
    args = ap.parse_args()
    if args.variant:
        args.graft_only = True
    for a in args.adapter:
        if not os.path.isfile(a):
            die(f"adapter not found: {a}")
    if args.busy < 0:
        die("--busy must be >= 0")
    if args.max_noise is not None and args.max_noise < 0 or args.busy:
        args.max_noise = None

    model = Path(args.model)
    if not model.is_file():
        die(f"model not found: {model}")
    if args.graft is None:
        args.graft = default_graft(args.isa)
    graft = shutil.which(args.graft) if os.sep not in args.graft else args.graft
    if not graft or not os.path.isfile(graft):
        build = AVX2_GRAFT_BUILD if args.isa == "avx2" else "cargo build --release"
        die(f"graft binary not found: {args.graft} (build it with `{build}`, "
            "or pass --graft / set GRAFT_BIN)")
    if args.python is None and not args.graft_only:
        args.python = default_python(args.isa)
    llama_version = None if args.graft_only else check_python(args.python)
    gv = subprocess.run([graft, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    graft_version = gv.stdout.strip() or "?"

    common = ["--model", str(model), "--threads", str(args.threads), "--pp", args.pp,
              "--tg", args.tg, "--reps", str(args.reps)]
    if args.flash_attn:
        common.append("--flash-attn")
    graft_cmd = [graft, "bench"] + common + (["--cpu-repack"] if args.cpu_repack else [])
    for a in args.adapter:
        graft_cmd += ["--adapter", a]
    llama_cmd = [args.python, str(LLAMA_SCRIPT)] + common + (
        ["--extra-bufts"] if args.extra_bufts else [])
    for a in args.adapter:
        llama_cmd += ["--lora", a]
    variants = []  # (label, adapter files)
    for spec in args.variant:
        label, _, files = spec.rpartition("=")
        files = [] if files.strip() in ("", "none") else [f for f in files.split(",") if f]
        for f in files:
            if not os.path.isfile(f):
                die(f"adapter not found: {f}")
        if not label:
            label = "no adapter" if not files else ", ".join(Path(f).stem for f in files)
        variants.append((label, files))
    busy_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                  for _ in range(args.busy)]
    try:
        if variants:
            return run_variants(args, graft, graft_version, model, common, variants)
        return run_pair(args, graft, graft_version, llama_version, model, graft_cmd, llama_cmd)
    finally:
        for p in busy_procs:
            p.kill()
            p.wait()


def run_pair(args, graft: str, graft_version: str, llama_version: str | None, model: Path,
             graft_cmd: list[str], llama_cmd: list[str]) -> int:
    """graft and llama.cpp interleaved, --rounds times; prints the table."""
    load_before = loadavg()
    busy = None if args.busy else busy_pct()
    if busy is not None and busy > 10:
        print(f"bench.py: warning: the machine is {busy:.0f}% busy before starting; "
              "results will be noisy (stop other work first)", file=sys.stderr)
    graft_runs, llama_runs, discarded = [], [], []

    def measured(cmd: list[str], what: str, r: int) -> dict:
        """One run; if other processes used more than --max-noise % of the CPUs during it,
        wait for a quiet machine and run it again (up to --retries times)."""
        for attempt in range(args.retries + 1):
            if args.max_noise is not None:
                wait_quiet(args.quiet_wait)
            print(f"round {r + 1}/{args.rounds}: {what} ...", file=sys.stderr, flush=True)
            out = run_json(cmd, what)
            f = out.get("foreign_cpu_pct")
            if args.max_noise is None or f is None or f <= args.max_noise \
                    or attempt == args.retries:
                return out
            print(f"  other processes used {f:.0f}% of the CPUs during it: discarded, "
                  "running again", file=sys.stderr, flush=True)
            discarded.append({"engine": what, "round": r + 1, **out})
        raise AssertionError

    t0 = time.time()
    for r in range(args.rounds):
        graft_runs.append(measured(graft_cmd, "graft", r))
        if not args.graft_only:
            llama_runs.append(measured(llama_cmd, "llama.cpp", r))
    foreign = [x["foreign_cpu_pct"] for x in graft_runs + llama_runs
               if x.get("foreign_cpu_pct") is not None]
    elapsed = time.time() - t0

    g = summarize(graft_runs)
    l = summarize(llama_runs) if llama_runs else None
    l0 = llama_runs[0] if llama_runs else {}
    machine = {
        "cpu": cpu_model(),
        "nproc": n_cpus(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "foreign_cpu_pct_max": max(foreign) if foreign else None,
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("OMP_", "GOMP_", "GGML_", "KMP_", "GRAFT_ADAPTIVE"))},
        "busy_processes": args.busy,
        "isa": args.isa,
    }
    info = {
        "machine": machine,
        "threads": args.threads,
        "flash_attn": args.flash_attn,
        "graft_cpu_repack": args.cpu_repack,
        "model": str(model),
        "model_size_mib": model.stat().st_size / 2**20,
        "graft_version": graft_version,
        "graft_bin": graft,
        "llama_cpp_python": llama_version,
        "python": args.python,
        "llama_use_extra_bufts": l0.get("use_extra_bufts"),
        "llama_system_info": l0.get("system_info"),
        "adapters": args.adapter,
        "graft_only": args.graft_only,
        "rounds": args.rounds,
        "reps": args.reps,
        "elapsed_s": elapsed,
        "max_noise_pct": args.max_noise,
        "discarded_runs": len(discarded),
    }

    print(f"machine:  {machine['cpu']}, nproc {machine['nproc']} "
          f"(load avg {fmt(load_before, 2)} before, {fmt(machine['loadavg_after'], 2)} after)")
    flags = next((l.split()[2:] for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    has = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    print(f"isa:      {'AVX2 + FMA builds of both engines' if args.isa == 'avx2' else 'native builds'}"
          f" (the CPU has {has})")
    print(f"model:    {model} ({info['model_size_mib']:.1f} MiB)")
    print(f"threads:  {args.threads}, flash_attn: {args.flash_attn}, "
          f"{args.rounds} rounds x {args.reps} reps, interleaved")
    if args.graft_only:
        print(f"versions: {graft_version} (graft only)")
    else:
        print(f"versions: {graft_version} (cpu_repack={args.cpu_repack}); llama-cpp-python {llama_version} "
              f"(use_extra_bufts={l0.get('use_extra_bufts')}, n_ctx {l0.get('n_ctx')}, "
              f"n_batch {l0.get('n_batch')}, n_ubatch {l0.get('n_ubatch')})")
    if args.adapter:
        print(f"adapters: {', '.join(args.adapter)} (all active, scale 1)")
    if args.busy:
        print(f"load:     {args.busy} CPU-bound busy loop(s) ran throughout (speed under load)")
    elif foreign:
        print(f"noise:    other processes used up to {max(foreign):.1f}% of the CPUs during a kept "
              f"run ({len(discarded)} noisy run(s) discarded and rerun)"
              + ("  <-- WARNING: rerun on a quiet machine" if max(foreign) > 5 else ""))
    if machine["env"]:
        print(f"env:      {' '.join(f'{k}={v}' for k, v in machine['env'].items())}")
    print()
    if l is None:
        header = ["test", "graft"]
        rows = graft_only_rows(g, graft_runs)
        notes = FOOTNOTES[:1]
    else:
        header = ["test", "graft", "llama.cpp", "graft / llama.cpp"]
        rows = table_rows(g, l) + adapter_rows(graft_runs, llama_runs)
        notes = FOOTNOTES
    emit_table(args.markdown, header, rows, notes)

    if args.json:
        args.json.write_text(json.dumps({"info": info, "summary": {"graft": g, "llama.cpp": l},
                                         "runs": {"graft": graft_runs, "llama.cpp": llama_runs},
                                         "discarded_runs": discarded},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
