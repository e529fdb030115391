"""Tests of scripts/bench_vs_python.py's own logic: the parts that need neither PyTorch nor
ONNX Runtime. Run by `cargo test` (tests/scripts.rs) or directly:

    python3 -m unittest discover -s scripts/tests -v

The XGETBV patch is tested on a real shared library built here with the system C compiler,
loaded and called before and after: the instruction must report no AVX-512 register state
afterwards, and bytes that spell XGETBV inside another instruction must be left alone."""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_vs_python as bvp  # noqa: E402

# Two functions: one runs XGETBV (XCR0, the OS-enabled register state), the other only
# carries XGETBV's three bytes inside an immediate operand (b8 0f 01 d0 00 = mov eax, imm32).
LIBRARY_SOURCE = r"""
unsigned xcr0_low(void) {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}
unsigned decoy(void) {
    unsigned r;
    __asm__ volatile("movl $0x00d0010f, %0" : "=a"(r));
    return r;
}
"""

XGETBV = b"\x0f\x01\xd0"
PATCHED = b"\xb0\x07\x90"


def cpu_has_xsave() -> bool:
    """Whether XGETBV may run here (the OS enabled XSAVE: `osxsave` in /proc/cpuinfo's flags,
    or AVX, which needs it)."""
    flags = bvp.cpu_flags()
    return "osxsave" in flags or "avx" in flags


@unittest.skipUnless(platform.machine() in ("x86_64", "AMD64"), "XGETBV is an x86 instruction")
class PatchXgetbv(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp)
        cc = shutil.which("cc") or shutil.which("gcc")
        self.objdump = shutil.which("objdump")
        if cc is None or self.objdump is None:
            self.fail("these tests need a C compiler (cc) and objdump (binutils)")
        src = self.tmp / "xgetbv.c"
        src.write_text(LIBRARY_SOURCE)
        self.lib = self.tmp / "libxgetbv.so"
        subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(self.lib), str(src)],
                       check=True)

    def test_patches_the_instruction_and_leaves_lookalike_bytes(self):
        before = self.lib.read_bytes()
        # Both the real instruction and the decoy's immediate spell 0f 01 d0.
        self.assertEqual(before.count(XGETBV), 2, "the test library should hold two copies")
        self.assertEqual(bvp.patch_xgetbv(self.lib, self.objdump), 1)
        after = self.lib.read_bytes()
        self.assertEqual(len(after), len(before))
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        self.assertTrue(changed and max(changed) - min(changed) < 3, changed)
        start = min(changed)
        self.assertEqual(before[start:start + 3], XGETBV)
        self.assertEqual(after[start:start + 3], PATCHED)
        self.assertEqual(after.count(XGETBV), 1, "the decoy's bytes must stay")
        # Patching again finds nothing and leaves the file as it is.
        self.assertEqual(bvp.patch_xgetbv(self.lib, self.objdump), 0)
        self.assertEqual(self.lib.read_bytes(), after)

    def test_patched_library_reports_avx_state_and_no_avx512_state(self):
        bvp.patch_xgetbv(self.lib, self.objdump)
        # Loaded only after patching (each test builds its library in a fresh folder).
        lib = ctypes.CDLL(str(self.lib))
        lib.xcr0_low.restype = ctypes.c_uint
        lib.decoy.restype = ctypes.c_uint
        low = lib.xcr0_low() & 0xFF
        self.assertEqual(low, 0x07, "x87, SSE and AVX state; no opmask/ZMM (bits 5-7)")
        self.assertEqual(lib.decoy(), 0x00D0010F)

    @unittest.skipUnless(cpu_has_xsave(), "the OS has not enabled XSAVE on this CPU")
    def test_unpatched_library_reports_what_the_cpu_has(self):
        lib = ctypes.CDLL(str(self.lib))
        lib.xcr0_low.restype = ctypes.c_uint
        low = lib.xcr0_low() & 0xFF
        self.assertEqual(low & 0x03, 0x03, "x87 and SSE state are always enabled")
        avx512_state = low & 0xE0 == 0xE0
        self.assertEqual(avx512_state, "avx512f" in bvp.cpu_flags(),
                         f"XCR0 low byte {low:#x} against /proc/cpuinfo's avx512f")

    def test_a_library_without_xgetbv_is_not_rewritten(self):
        plain = self.tmp / "plain.c"
        plain.write_text("int answer(void) { return 42; }\n")
        lib = self.tmp / "libplain.so"
        subprocess.run([shutil.which("cc") or "gcc", "-O1", "-shared", "-fPIC", "-o", str(lib),
                        str(plain)], check=True)
        mtime = lib.stat().st_mtime_ns
        self.assertEqual(bvp.patch_xgetbv(lib, self.objdump), 0)
        self.assertEqual(lib.stat().st_mtime_ns, mtime)


class IsaCapBroken(unittest.TestCase):
    capped = Path("/out/ort-avx2")

    def test_capped_measurements_pass(self):
        self.assertIsNone(bvp.isa_cap_broken("bertbench", {"isa": "avx2"}, self.capped))
        self.assertIsNone(bvp.isa_cap_broken("torch", {"cpu_capability": "AVX2"}, self.capped))
        self.assertIsNone(bvp.isa_cap_broken(
            "ort", {"onnxruntime_file": "/out/ort-avx2/onnxruntime/__init__.py"}, self.capped))

    def test_uncapped_measurements_are_named(self):
        self.assertIn("avx512 kernels", bvp.isa_cap_broken("bertbench", {"isa": "avx512"},
                                                           self.capped))
        self.assertIn("AVX512", bvp.isa_cap_broken("torch", {"cpu_capability": "AVX512"},
                                                   self.capped))
        self.assertIn("None", bvp.isa_cap_broken("torch", {}, self.capped))
        site = "/venv/lib/python3.11/site-packages/onnxruntime/__init__.py"
        self.assertIn(site, bvp.isa_cap_broken("ort", {"onnxruntime_file": site}, self.capped))
        # A sibling folder whose name merely starts like the copy's is not the copy.
        self.assertIsNotNone(bvp.isa_cap_broken(
            "ort", {"onnxruntime_file": "/out/ort-avx2-old/onnxruntime/__init__.py"},
            self.capped))
        self.assertIsNotNone(bvp.isa_cap_broken("ort", {}, self.capped))
        self.assertIsNotNone(bvp.isa_cap_broken(
            "ort", {"onnxruntime_file": "/out/ort-avx2/onnxruntime/__init__.py"}, None))


def row(runtime: str, round_: int, median_s: float, status: str = "ok") -> dict:
    return {"model": "bert-base-uncased", "shape": "1x128", "runtime": runtime,
            "round": round_, "status": status, "median_s": median_s, "peak_rss_mb": 100.0 * round_}


class Summary(unittest.TestCase):
    def test_ratios_pair_rounds_and_skip_failures(self):
        rows = [row("bertbench", 1, 0.100), row("ort", 1, 0.120), row("torch", 1, 0.300),
                row("bertbench", 2, 0.200), row("ort", 2, 0.180), row("torch", 2, 0.0, "failed")]
        (cell,) = bvp.summarize(rows, bvp.RUNTIMES)
        self.assertEqual(cell["time"]["bertbench"], [0.100, 0.200])
        # Each round's ratio is the other runtime's time over bertbench's in that round.
        self.assertEqual([round(r, 6) for r in cell["ratio"]["ort"]], [1.2, 0.9])
        self.assertEqual([round(r, 6) for r in cell["ratio"]["torch"]], [3.0])
        self.assertEqual(cell["failed"], ["torch"])
        self.assertEqual(cell["rss"]["ort"], 200.0)

    def test_goal_text(self):
        self.assertEqual(bvp.goal_text([1.2, 1.01], 1.0), "yes")
        self.assertEqual(bvp.goal_text([1.2, 1.1, 0.9], 1.0), "median only")
        self.assertEqual(bvp.goal_text([1.2, 0.9, 0.8], 1.0), "no")


if __name__ == "__main__":
    unittest.main()
