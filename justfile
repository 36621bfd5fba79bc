# Every recipe a person runs. On a fresh checkout use ./run <recipe> (it installs the tools first).

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
wasm := root / "target/wasm32-wasip1/release/metrics_gate.wasm"
fault_wasm := root / "target/fault-injection/wasm32-wasip1/release/metrics_gate.wasm"
wasm_bindgen_version := "0.2.130"

export ENVOY_BIN := root / ".venv/bin/envoy"
export METRICS_GATE_WASM := wasm
export METRICS_GATE_FAULT_WASM := fault_wasm

# List the recipes.
default:
    @just --list

# Install the Rust wasm target, Envoy and just (into .venv).
setup:
    scripts/setup.sh

# Build the filter (.wasm for Envoy) and its test-only fault-injection twin.
build:
    @echo "==> building the filter for wasm32-wasip1"
    cargo build --locked -p metrics-gate-filter --target wasm32-wasip1 --release
    cargo build --locked -p metrics-gate-filter --target wasm32-wasip1 --release --features fault-injection --target-dir target/fault-injection
    @if command -v wasm-opt >/dev/null; then \
      echo "==> shrinking with wasm-opt -Oz ($(stat -c %s {{wasm}}) bytes before)"; \
      wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
        --enable-mutable-globals --enable-multivalue --enable-reference-types {{wasm}} -o {{wasm}}.opt \
        && mv {{wasm}}.opt {{wasm}}; \
    else echo "==> wasm-opt not found (Debian: apt-get install binaryen): the .wasm stays unshrunk"; fi
    @echo "==> {{wasm}}: $(stat -c %s {{wasm}}) bytes"

# Unit tests of every crate, and clippy with warnings as errors.
unit:
    @echo "==> unit tests (native)"
    cargo test --locked --workspace --lib --bins
    @echo "==> the renderer against its committed examples"
    cargo test --locked -p metrics-gate-envoy --tests
    @echo "==> the filter's integration tests, the fuzz corpora replayed among them (docs/fuzzing.md)"
    cargo test --locked -p metrics-gate-filter --tests
    @echo "==> clippy"
    cargo clippy --locked --workspace --all-targets -- -D warnings
    cargo clippy --locked -p metrics-gate-filter --target wasm32-wasip1 --release -- -D warnings

# The filter's unit tests compiled to wasm, run under Node.js by wasm-bindgen-test.
test-wasm:
    #!/usr/bin/env bash
    set -euo pipefail
    runner={{root}}/.tools/bin/wasm-bindgen-test-runner
    if [ ! -x "$runner" ]; then
      echo "==> installing wasm-bindgen-cli {{wasm_bindgen_version}} into .tools (one time, ~3 min)"
      rustup target add wasm32-unknown-unknown
      cargo install --quiet wasm-bindgen-cli --version ={{wasm_bindgen_version}} --root {{root}}/.tools
    fi
    echo "==> filter unit tests under wasm (Node.js)"
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$runner" \
      cargo test --locked -p metrics-gate-filter --lib --target wasm32-unknown-unknown

# Targets run one after another, each for `seconds` (one libFuzzer process at a time); inputs that add
# coverage are merged into filter/fuzz/corpus/. Ends with a table per target, and fails if any target
# crashed. FUZZ_RUNS=<n> also stops a target after n executions; FUZZ_SANITIZER=address adds ASan.
# Installs nightly and cargo-fuzz if missing. See docs/fuzzing.md.
# Coverage-guided fuzzing of the filter: `just fuzz [seconds-per-target] [target...]` (default 60 s, all).
fuzz seconds="60" *targets:
    #!/usr/bin/env bash
    set -euo pipefail
    cd {{root}}/filter
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
      echo "==> installing the nightly Rust toolchain (one time)"
      rustup toolchain install nightly --profile minimal
    fi
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
      echo "==> installing cargo-fuzz (one time, about 2 min)"
      cargo +nightly install cargo-fuzz --locked
    fi
    case "{{seconds}}" in ''|*[!0-9]*) echo "seconds must be a whole number, got '{{seconds}}'" >&2; exit 2 ;; esac
    all=$(cargo +nightly fuzz list)
    targets="{{targets}}"
    [ -n "$targets" ] || targets="$all"
    for t in $targets; do
      grep -qx "$t" <<<"$all" || { echo "unknown fuzz target '$t'; targets: $(echo $all)" >&2; exit 2; }
    done
    work={{root}}/target/fuzz
    flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --debug-assertions --target-dir "$work")
    limits=(-max_total_time={{seconds}} -timeout=10 -print_final_stats=1)
    [ -z "${FUZZ_RUNS:-}" ] || limits+=(-runs="$FUZZ_RUNS")
    echo "==> building the fuzz targets (nightly, debug assertions on)"
    cargo +nightly fuzz build "${flags[@]}"
    mkdir -p "$work/logs"
    rows=()
    crashed=0
    for t in $targets; do
      mkdir -p "$work/corpus/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
      stamp="$work/logs/$t.start"
      touch "$stamp"
      log="$work/logs/$t.log"
      echo "==> fuzzing $t for {{seconds}} s (log: $log)"
      # New inputs go to the scratch corpus (first directory); the committed one is read as well.
      status=0
      cargo +nightly fuzz run "${flags[@]}" "$t" "$work/corpus/$t" "fuzz/corpus/$t" -- "${limits[@]}" \
        >"$log" 2>&1 || status=$?
      stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
      runs=$(stat number_of_executed_units)
      rate=$(stat average_exec_per_sec)
      found=$(find "fuzz/artifacts/$t" -type f -newer "$stamp" | wc -l)
      if [ "$status" -ne 0 ] && [ "$found" -eq 0 ]; then found="?"; fi
      if [ "$found" != 0 ]; then
        crashed=1
        grep -m 1 -E "panicked at|ERROR: libFuzzer" "$log" || true
        find "fuzz/artifacts/$t" -type f -newer "$stamp" -printf "    reproducer: filter/%p\n"
      fi
      # Keep what adds coverage: merged into the committed corpus (review with git status).
      before=$(find "fuzz/corpus/$t" -type f | wc -l)
      cargo +nightly fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "$work/corpus/$t" -- -merge=1 \
        >"$work/logs/$t.merge.log" 2>&1 || echo "    (merge into fuzz/corpus/$t failed: $work/logs/$t.merge.log)"
      files=$(find "fuzz/corpus/$t" -type f | wc -l)
      rows+=("$t {{seconds}} ${runs:-?} ${rate:-?} $files $((files - before)) $found")
    done
    echo
    echo "==> fuzzing results ($(date -u +%Y-%m-%dT%H:%MZ), $(rustc +nightly --version | cut -d" " -f2))"
    printf "%-20s %8s %12s %8s %8s %6s %8s\n" target seconds executions exec/s corpus added crashes
    for row in "${rows[@]}"; do printf "%-20s %8s %12s %8s %8s %6s %8s\n" $row; done
    if [ "$crashed" -ne 0 ]; then
      echo "==> crashes found: reproduce with 'cargo +nightly fuzz run <target> <file>' in filter/" >&2
      exit 1
    fi

# Integration tests: the real Envoy with the built .wasm, the mock apiserver and fake components.
integration: build
    @echo "==> integration tests (real Envoy)"
    cargo test --locked -p metrics-gate-host-tests --test integration -- --test-threads 2

# Everything CI runs.
test: unit test-wasm integration

# Build the filter, copy it (and the sidecar bootstrap) into manifests/ and render every overlay.
manifests: build
    cp {{wasm}} {{root}}/manifests/base/metrics_gate.wasm
    cp {{wasm}} {{root}}/manifests/examples/sidecar/metrics_gate.wasm
    cp {{root}}/envoy/examples/sidecar.yaml {{root}}/manifests/examples/sidecar/envoy-sidecar.yaml
    @for d in overlays/control-plane overlays/all-nodes examples/sidecar; do \
      echo "==> kubectl kustomize manifests/$d"; \
      kubectl kustomize {{root}}/manifests/$d > /dev/null; \
    done
    @echo "==> ready: kubectl apply --server-side -k manifests/overlays/control-plane (or overlays/all-nodes)"

# kustomize reads only files under its own directory: the manifests' SDS files are copies of the
# rendered ones in envoy/examples/sds/ (manifests_valid.rs fails when a copy differs).
# Render every Envoy configuration the repository ships (envoy/examples/, manifests/base/envoy-bootstrap.yaml, the manifests' SDS files).
render:
    cargo run --locked --quiet -p metrics-gate-envoy --bin metrics-gate-render -- examples --out {{root}}
    cargo run --locked --quiet -p metrics-gate-envoy --bin metrics-gate-render -- reference > {{root}}/docs/cli.md
    @for d in base examples/sidecar; do \
      cp {{root}}/envoy/examples/sds/sds.yaml {{root}}/envoy/examples/sds/serving-certificate.yaml {{root}}/manifests/$d/; \
    done

# The .wasm as an OCI image for Istio's WasmPlugin and Envoy Gateway (`url: oci://…`): an OCI image
# layout in target/oci/layout (Wasm image spec, compat variant: one tar.gz layer holding plugin.wasm,
# reproducible bytes) and target/oci/wasmplugin.yaml, the Istio example pinned to this image's digest.
# Prints the digest and the `skopeo copy` that pushes it. See docs/deploying.md, "The .wasm by digest".
# OCI image of the .wasm: `just oci [registry/name:tag]`.
oci image="ghcr.io/example/metrics-gate:v0.1.0": build
    cargo run --locked --quiet -p metrics-gate-host-tests --bin metrics-gate-oci -- --wasm {{wasm}} \
      --image {{image}} --layout {{root}}/target/oci/layout \
      --wasmplugin {{root}}/manifests/examples/istio/wasmplugin.yaml --pinned-wasmplugin {{root}}/target/oci/wasmplugin.yaml

# The local demo: mock apiserver, fake components and Envoy with the filter, on loopback.
demo: build
    cargo run --locked --quiet -p metrics-gate-host-tests --bin metrics-gate-demo

# Benchmarks, not part of the tests: metrics-gate against bare Envoy, a do-nothing wasm filter and
# the seed's HAProxy with wrk on loopback (see BENCHMARKS.md). Refreshes bench/results/ and the
# results in BENCHMARKS.md; `just bench --quick` is a smoke run (a few minutes) that writes to
# target/bench-quick/ only.
bench *args: build
    #!/usr/bin/env bash
    set -euo pipefail
    missing=""
    for tool in wrk haproxy taskset wasm-as; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
    if [ -n "$missing" ]; then
      echo "==> installing wrk, haproxy and binaryen (Debian)"
      apt-get update -qq && apt-get install -y -qq wrk haproxy util-linux binaryen
    fi
    # Setup f, the floor: a wasm filter that does nothing, exporting only the callbacks the filter uses.
    mkdir -p {{root}}/target/bench
    wasm-as {{root}}/bench/floor.wat -o {{root}}/target/bench/floor.wasm
    if ! {{root}}/.venv/bin/python -c "import matplotlib" 2>/dev/null; then
      echo "==> installing matplotlib into .venv"
      {{root}}/.venv/bin/pip install -q "matplotlib==3.11.2"
    fi
    case " {{args}} " in
      *" --quick "*) out={{root}}/target/bench-quick; doc=() ;;
      *) out={{root}}/bench/results; doc=(--doc {{root}}/BENCHMARKS.md) ;;
    esac
    MG_BENCH_COMMAND="just bench {{args}}" cargo run --locked -q -p metrics-gate-host-tests \
      --bin metrics-gate-bench -- --out "$out" --floor-wasm {{root}}/target/bench/floor.wasm "${doc[@]}" {{args}}
    {{root}}/.venv/bin/python {{root}}/bench/plot.py "$out/results.json" "$out/results.png"
    echo "==> $out/results.png"

# docs/dashboard.png: the main panels of the gate's Grafana dashboard (manifests/monitoring/), drawn
# from what a real Prometheus scraped of a live gate: gate_dashboard.rs's run (the stack, traffic of
# every decision, the apiserver slow then failing) with `seconds` of traffic, its panels' data
# written out and plotted with matplotlib. See docs/alerts.md.
# Draw the dashboard from a live run: `just dashboard-png [seconds]` (default 60).
dashboard-png seconds="60": build
    #!/usr/bin/env bash
    set -euo pipefail
    if ! {{root}}/.venv/bin/python -c "import matplotlib" 2>/dev/null; then
      echo "==> installing matplotlib into .venv"
      {{root}}/.venv/bin/pip install -q "matplotlib==3.11.2"
    fi
    data={{root}}/target/dashboard/data.json
    mkdir -p "$(dirname "$data")"
    rm -f "$data"
    METRICS_GATE_DASHBOARD_DATA="$data" METRICS_GATE_DASHBOARD_SECONDS={{seconds}} cargo test --locked -q \
      -p metrics-gate-host-tests --test integration gate_dashboard::every_dashboard_query
    {{root}}/.venv/bin/python {{root}}/scripts/plot_dashboard.py "$data" {{root}}/docs/dashboard.png
    echo "==> docs/dashboard.png (data: $data)"

# The whole stack (four listeners over TLS) scraped at a steady rate while the scraper's token rotates
# every minute, the apiserver goes down, slow and failing in episodes, and the proxy's token and the
# serving certificate are swapped; a sample every 5 s. Writes results.json, results.md and soak.png to
# target/soak/ (or --out DIR); fails on a hung request, an unexpected answer, a VM reload or growing
# RSS. Not part of the tests. See docs/soak.md.
# Soak run, default one hour: `just soak [--duration 15m] [--rate 300] [--out DIR]`.
soak *args: build
    #!/usr/bin/env bash
    set -euo pipefail
    if ! {{root}}/.venv/bin/python -c "import matplotlib" 2>/dev/null; then
      echo "==> installing matplotlib into .venv"
      {{root}}/.venv/bin/pip install -q "matplotlib==3.11.2"
    fi
    out={{root}}/target/soak
    set -- {{args}}
    while [ $# -gt 0 ]; do
      case "$1" in
        --out) out="${2:-}"; shift $(( $# > 1 ? 2 : 1 )) ;;
        --out=*) out="${1#--out=}"; shift ;;
        *) shift ;;
      esac
    done
    rm -f "$out/results.json"
    status=0
    MG_SOAK_COMMAND="just soak {{args}}" cargo run --locked -q -p metrics-gate-host-tests \
      --bin metrics-gate-soak -- {{args}} || status=$?
    if [ -f "$out/results.json" ]; then
      {{root}}/.venv/bin/python {{root}}/bench/plot_soak.py "$out/results.json" "$out/soak.png"
      echo "==> $out/soak.png"
    fi
    exit $status
