#!/usr/bin/env bash
# What this machine is, for logs and for the keys of the reference caches.
#
#   scripts/machine_info.sh          CPU model, instruction-set flags, cores, toolchain versions
#   scripts/machine_info.sh --cpu    one line: "<cpu model> | <sorted ISA flags>"
#
# The "--cpu" line is what the llama.cpp references are keyed by (scripts/references.sh): ggml is
# compiled with -march=native and its prompt kernels (tinyBLAS, quantized dot products) differ
# between instruction sets, so its outputs belong to the CPU that computed them. The Rust tests
# compute the same line (runtime/tests/common/mod.rs, `cpu_line`) to check that the references
# they read were made on this CPU; keep the two in step.
set -euo pipefail

# ISA flags that change what ggml's kernels compute (x86 SIMD families; Arm's NEON/SVE/dotprod).
ISA_RE='^(sse.*|ssse3|avx.*|fma|f16c|amx.*|vnni|avx_vnni|bmi.*|popcnt|asimd.*|sve.*|sme|sme2[a-z0-9]*|i8mm|bf16|fphp|dotprod)$'

cpu_model() {
    local m
    m="$(grep -m1 -E '^(model name|Model name|Hardware)[[:space:]]*:' /proc/cpuinfo 2>/dev/null \
        | cut -d: -f2- | sed 's/^ *//; s/ *$//')"
    [[ -n "$m" ]] || m="$(uname -m)"
    printf '%s' "$m"
}

isa_flags() {
    grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2- \
        | tr ' ' '\n' | grep -E "$ISA_RE" | LC_ALL=C sort -u | tr '\n' ' ' | sed 's/ $//'
}

if [[ "${1:-}" == "--cpu" ]]; then
    printf '%s | %s\n' "$(cpu_model)" "$(isa_flags)"
    exit 0
fi

ver() { "$@" 2>/dev/null | head -n1 || true; }
echo "cpu:       $(cpu_model) ($(nproc) cores)"
echo "isa flags: $(isa_flags)"
echo "memory:    $(free -h 2>/dev/null | awk '/^Mem:/ {print $2}')"
echo "rustc:     $(ver rustc --version)"
echo "cargo:     $(ver cargo --version)"
echo "cc:        $(ver cc --version)"
echo "cmake:     $(ver cmake --version)"
echo "python3:   $(ver python3 --version)"
