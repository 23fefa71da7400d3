#!/usr/bin/env bash
# Runs every G6 fuzz target for a fixed time (see fuzz/README.md).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 20 s, all targets)
#
# Per target: executions, coverage (`cov`/`ft` of libFuzzer's final `#N DONE` line) and
# corpus size. Exit status: 0 if no target crashed, 1 if one did (its input is saved under
# fuzz/artifacts/<target>/ and the tail of its log is printed), 2 on a build or usage error.
#
# Environment: G6_FUZZ_TOOLCHAIN (default nightly-2026-05-20), G6_FUZZ_SANITIZER (default
# none; address, memory, thread…), G6_FUZZ_ARGS (extra libFuzzer arguments, e.g. "-seed=1").
# Logs: fuzz/logs/<target>.log.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

secs=${1:-20}
[[ $# -gt 0 ]] && shift
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 1)); then
    echo "usage: $0 [seconds-per-target] [target...]" >&2
    exit 2
fi
all_targets=(config_parse admin_command admin_dispatch)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

toolchain=${G6_FUZZ_TOOLCHAIN:-nightly-2026-05-20}
# The fuzzers never load the eBPF object: skip building it (g6-user/build.rs degrades), also
# under CI's G6_EBPF_STRICT=1 (which would make the skipped object a build error).
export AYA_BUILD_SKIP=1
unset G6_EBPF_STRICT
fuzz=(cargo "+$toolchain" fuzz)
# Release build with debug assertions and overflow checks. No sanitizer by default: the
# property code and the parsers are safe Rust, and without ASan the first build took 6 min
# instead of about 10 (2 cores). G6_FUZZ_SANITIZER=address for ASan.
sanitizer=${G6_FUZZ_SANITIZER:-none}
build_flags=(-a -s "$sanitizer")

max_len() {
    case $1 in
    config_parse) echo 16384 ;;  # etc/G6.conf is ~14 KB
    admin_command) echo 16384 ;; # room for lines over the 4096-byte limit
    *) echo 4096 ;;
    esac
}

mkdir -p logs
echo "== building fuzz targets ($toolchain)"
build_start=$(date +%s)
if ! "${fuzz[@]}" build "${build_flags[@]}" >logs/build.log 2>&1; then
    tail -n 40 logs/build.log >&2
    exit 2
fi
echo "   built in $(($(date +%s) - build_start)) s"
failed=()
printf '%-15s %-6s %12s %8s %8s %8s %s\n' target status execs cov ft corpus seconds
for t in "${targets[@]}"; do
    if [[ ! -f fuzz_targets/$t.rs ]]; then
        echo "unknown target $t" >&2
        exit 2
    fi
    # New inputs go to the first directory (git-ignored); seeds and regressions are read only.
    mkdir -p "corpus/$t" "seeds/$t" "regressions/$t" "artifacts/$t"
    log=logs/$t.log
    start=$(date +%s)
    # shellcheck disable=SC2086 # G6_FUZZ_ARGS is a list of words
    "${fuzz[@]}" run "${build_flags[@]}" "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len="$(max_len "$t")" \
        -dict="dicts/$t.dict" -print_final_stats=1 ${G6_FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
    [[ -n $execs ]] || execs=$(sed -nE 's/^#([0-9]+)[[:space:]].*/\1/p' <<<"$done_line")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$done_line")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$done_line")
    status=ok
    ((rc == 0)) || status="FAIL($rc)"
    printf '%-15s %-6s %12s %8s %8s %8s %s\n' "$t" "$status" "${execs:--}" "${cov:--}" \
        "${ft:--}" "${corp:--}" "$took"
    [[ -n $done_line ]] && echo "    $done_line"
    if ((rc != 0)); then
        failed+=("$t")
        echo "---- $t: last lines of fuzz/$log" >&2
        tail -n 60 "$log" >&2
        echo "---- crash inputs: fuzz/artifacts/$t/ (copy to fuzz/regressions/$t/ to keep them)" >&2
    fi
done

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all targets ok (${secs} s each)"
