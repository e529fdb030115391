//! The Python helper scripts' own tests (`scripts/tests/`), run with the system's `python3`
//! so that `cargo test` covers them: the side-by-side script's ONNX Runtime instruction-set
//! cap (an XGETBV patch tried on a shared library built with `cc`, then loaded and called),
//! its per-runtime cap checks and its summary arithmetic. They need only Python's standard
//! library, a C compiler and objdump, not PyTorch or ONNX Runtime.

use std::path::Path;
use std::process::Command;

#[test]
fn python_script_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "scripts/tests", "-v"])
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 not found: the script tests need Python 3.9 or later on PATH");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/tests failed:\n{log}");
    // unittest's last lines: "Ran N tests in ..." and "OK" (with skips listed, if any).
    assert!(log.contains("\nOK"), "no OK from unittest:\n{log}");
}
