#!/usr/bin/env bash
# Builds bertbench for 64-bit Arm Linux (aarch64: AWS Graviton, Ampere; the code Apple silicon
# runs too) with warnings denied, and runs the library's tests, the parity tests against
# transformers and the `score` CLI's exit-code tests there, under qemu's user-mode emulator.
# Arm machines get the portable tier (the `gemm` crate's NEON kernels, the fused multiply-add
# element-wise passes), which an x86 machine never compiles: this is what keeps that build and
# its answers checked without an Arm machine.
# Emulation proves behaviour, not speed.
#
# Rust's own aarch64 standard library cannot be fetched here (rustup's servers are not a package
# registry), so the cross build uses Debian's toolchain for it: `rustc-web`/`cargo-web` (the
# same Rust release line as rustup's stable) with `libstd-rust-web-dev:arm64`, gcc's aarch64
# linker, and `qemu-user`, installed with apt-get when missing (Debian 12; needs root).
# The test binaries run on the arm64 C library that `libstd-rust-web-dev:arm64` brings
# (/lib/ld-linux-aarch64.so.1), not with `qemu-aarch64 -L /usr/aarch64-linux-gnu`: that
# mixes the cross package's loader with the multiarch libc, a different glibc build, and
# the first `pthread_create` then loops forever.
#
# Cold: about 8 minutes of build on 2 cores, then about 3 of tests; its own target folder
# (target/aarch64 unless CARGO_TARGET_DIR is set) keeps the build for the next run.
# Extra arguments go to `cargo test`, e.g. `scripts/check-aarch64.sh --test portable`.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=aarch64-unknown-linux-gnu
if ! [ -x /usr/bin/cargo ] || ! [ -d "/usr/lib/rustlib/$triple" ] \
  || ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "check-aarch64: needs Debian's rustc-web, cargo-web, libstd-rust-web-dev:arm64," \
      "gcc-aarch64-linux-gnu and qemu-user (apt-get not found)" >&2
    exit 1
  fi
  dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu qemu-user >/dev/null
fi

# Debian's cargo and rustc, not rustup's (which has no aarch64 standard library here); a
# compiler without that library fails here, with a clear message, not mid-build.
export PATH="/usr/bin:$PATH"
if ! /usr/bin/rustc --target "$triple" --print sysroot >/dev/null 2>&1; then
  echo "check-aarch64: /usr/bin/rustc cannot target $triple" >&2
  exit 1
fi
echo "check-aarch64: $(/usr/bin/rustc --version), $(qemu-aarch64 --version | head -1)" >&2

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/aarch64}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# Warnings are errors for this crate only (dependencies' lints stay capped): an unused item on
# Arm is one an x86 `cargo clippy -D warnings` cannot see.
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"

# Tests that spawn the CLI (the parity test of every kernel tier does) run it through qemu too:
# cargo's runner starts only the test executables, and a container seldom lets the kernel run
# aarch64 executables itself (binfmt_misc). See bin() in tests/common/mod.rs.
export BERTBENCH_TEST_RUNNER=qemu-aarch64
if [ $# -eq 0 ]; then
  set -- --lib --test parity --test cli_score
fi
/usr/bin/cargo test --release --target "$triple" "$@"
