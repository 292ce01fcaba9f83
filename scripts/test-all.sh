#!/usr/bin/env bash
# The whole test suite, as CI runs it: README.md prints this command and .ci/run calls it.
#   1. installs what the tests need (Debian packages, Python clients, Kubernetes tools from the Go
#      module proxy; all cached, so a warm run skips this in seconds)
#   2. formatting and clippy, warnings as errors
#   3. tier 1: `cargo test` (pure logic, fixtures, data plane on loopback)
#   4. the container image, built from scratch and checked by running the demo inside it
#   5. tier 2: a real control plane with kwok nodes and one real node (e2e/cluster up), the image
#      imported into that node's containerd, the Helm chart checks, and the e2e suite, whose
#      system test installs the chart with that image and runs the whole product in real pods
# Any missing tool fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export IOTSTAMP_CACHE="${IOTSTAMP_CACHE:-$HOME/.cache/iotstamp}"
# Build outside the checkout so a fresh clone reuses the last build (CI clones anew each run).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$IOTSTAMP_CACHE/target}"
export IOTSTAMP_BIN="$CARGO_TARGET_DIR/debug/iotstamp"

step() { printf '\n==> %s  (%s)\n' "$*" "$(date +%H:%M:%S)"; }

# Test output is also kept here, so the run ends with one total of every `test result:` line.
TEST_LOG="$(mktemp)"
run_tests() { "$@" 2>&1 | tee -a "$TEST_LOG"; }

step "dependencies"
.ci/setup-deps
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
e2e/cluster tools

# Test binaries bake in their checkout's path (env!("CARGO_MANIFEST_DIR")), and cargo does not rebuild
# them when the same sources sit in another checkout: a target dir last used by another clone would
# run tests against that clone's files. Dependencies are reused; this workspace's crates are rebuilt.
checkout_file="$CARGO_TARGET_DIR/.iotstamp-checkout"
if [[ -f $checkout_file && "$(<"$checkout_file")" != "$PWD" ]]; then
  step "the build cache was last used by $(<"$checkout_file"); rebuilding this workspace's crates"
  for package in $(cargo metadata --no-deps --format-version 1 | jq -r '.packages[].name'); do
    cargo clean --quiet -p "$package"
  done
fi
mkdir -p "$CARGO_TARGET_DIR"
printf '%s\n' "$PWD" >"$checkout_file"

step "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "build"
# The same package set as `cargo test` below: cargo unifies dependency features over the packages
# it builds, so building the whole workspace here would compile many dependencies a second time.
cargo build --all-targets

step "tier 1: cargo test"
run_tests cargo test

step "container image: scripts/build-image.sh (the debug binary), checked by running it"
# Debian's engine, started here if none runs. No bridge and no iptables: the image check runs its
# containers without a network.
if ! docker info >/dev/null 2>&1; then
  dockerd_log="$IOTSTAMP_CACHE/dockerd.log"
  setsid dockerd --iptables=false --ip6tables=false --bridge=none >"$dockerd_log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$dockerd_log" >&2; echo "dockerd did not start (log above)" >&2; exit 1; }
fi
image_tar="$IOTSTAMP_CACHE/iotstamp-ci-check.tar"
scripts/build-image.sh --binary "$IOTSTAMP_BIN" --tag iotstamp:ci-check
# A second tag of the same image: the system test's `helm upgrade` rolls every pod to it.
docker tag iotstamp:ci-check iotstamp:ci-check-upgrade
docker save -o "$image_tar" iotstamp:ci-check iotstamp:ci-check-upgrade

step "tier 2: control plane, kwok nodes and a real node"
cleanup() { e2e/cluster down >/dev/null 2>&1 || true; rm -f "$image_tar"; }
trap cleanup EXIT
e2e/cluster up
eval "$(e2e/cluster env)"
# The system test runs this image in real pods (imagePullPolicy Never: there is no registry).
e2e/cluster load-image "$image_tar"
export IOTSTAMP_E2E_IMAGE=iotstamp:ci-check IOTSTAMP_E2E_IMAGE_UPGRADE_TAG=ci-check-upgrade
e2e/helm-check.sh
run_tests cargo test -p iotstamp-e2e

step "all tests passed"
grep '^test result:' "$TEST_LOG" | awk '
    {for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) }}
    END { printf "tests: %d passed, %d failed\n", p, f }' 
