"""Tests of scripts/gpu_check.py's own logic (no GPU, no PyTorch): a step that fails is
recorded and the next one runs, a spent budget skips what is left, a command is time-boxed,
and bench's results are read back. Run by `cargo test` (tests/scripts.rs) or directly:

    python3 -m unittest discover -s scripts/tests -v
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import unittest
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_check as gc  # noqa: E402


def check(out: Path, budget_s: float = 60.0) -> gc.Check:
    out.mkdir(parents=True, exist_ok=True)
    args = SimpleNamespace(out=out, device="cpu", budget_s=budget_s, quick=True,
                           bundle=out / "bundle")
    return gc.Check(args)


class Steps(unittest.TestCase):
    def test_a_failing_step_is_recorded_and_the_next_runs(self):
        with tempfile.TemporaryDirectory() as tmp:
            ck = check(Path(tmp))

            def boom(d, b):
                raise RuntimeError("no device")

            ck.step("first", 10, boom)
            ck.step("second", 10, lambda d, b: {"found": 1})
            steps = json.loads((Path(tmp) / "steps.json").read_text())
            self.assertEqual([s["status"] for s in steps], ["failed", "ok"])
            self.assertIn("no device", steps[0]["error"])
            self.assertEqual(steps[1]["found"], 1)
            summary = (Path(tmp) / "summary.md").read_text()
            self.assertIn("| first | failed |", summary)

    def test_a_spent_budget_skips_the_rest(self):
        with tempfile.TemporaryDirectory() as tmp:
            ck = check(Path(tmp), budget_s=4.0)
            ck.step("late", 10, lambda d, b: {})
            self.assertEqual(ck.steps[0]["status"], "skipped")

    def test_a_step_gets_at_most_what_is_left(self):
        with tempfile.TemporaryDirectory() as tmp:
            ck = check(Path(tmp), budget_s=30.0)
            seen = []
            ck.step("one", 1000, lambda d, b: seen.append(b) or {})
            self.assertLessEqual(seen[0], 30.0)

    def test_a_command_is_time_boxed(self):
        with tempfile.TemporaryDirectory() as tmp:
            ck = check(Path(tmp))
            began = time.monotonic()
            rc, _ = ck.run(["sleep", "5"], 1.0, Path(tmp) / "sleep.log")
            self.assertIsNone(rc)
            self.assertLess(time.monotonic() - began, 4.0)
            rc, out = ck.run(["echo", "hi"], 5.0, Path(tmp) / "echo.log")
            self.assertEqual((rc, out), (0, "hi\n"))


class Results(unittest.TestCase):
    def test_bench_medians_are_read_per_cell_and_precision(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            cell = {"model": "m", "mode": "inference", "batch_size": 2, "sequence_length": 8,
                    "threads": 1}
            path.write_text(json.dumps({"measurements": [
                {"cell": {**cell, "dtype": "f16"}, "status": "ok",
                 "speed": {"summary": {"median": 0.002}}},
                {"cell": cell, "status": "ok", "speed": {"summary": {"median": 0.004}}},
                {"cell": {**cell, "batch_size": 4}, "status": "oom", "speed": None},
            ]}))
            got = gc.bench_median_ms(path)
            self.assertEqual(got, {("m", 2, 8, "f16"): 2.0, ("m", 2, 8, "f32"): 4.0})

    def test_bench_energy_is_read_back_per_thousand_sequences(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            cell = {"model": "m", "batch_size": 2, "sequence_length": 8, "dtype": "f16"}
            energy = {"joules": 3.0, "sequences": 600, "seconds": 0.5, "source": "counter"}
            path.write_text(json.dumps({"measurements": [
                {"cell": cell, "status": "ok", "speed": {"energy": energy}},
                {"cell": {**cell, "dtype": "f32"}, "status": "ok", "speed": {}},
                {"cell": {**cell, "batch_size": 4}, "status": "oom", "speed": None},
            ]}))
            self.assertEqual(gc.bench_energy_j_per_1k(path), {("m", 2, 8, "f16"): (5.0, "counter")})

    def test_torch_energy_is_nothing_on_a_cpu(self):
        meter = gc.TorchEnergy("cpu")
        self.assertIsNone(meter.read_mj())
        ms, mj, runs = gc.torch_time_ms(lambda: None, "cpu", min_runs=2, min_s=0.0, energy=meter)
        self.assertIsNone(mj)
        self.assertGreaterEqual(runs, 2)

    def test_a_gzipped_binary_is_unpacked_into_the_output_folder(self):
        import gzip
        import os
        with tempfile.TemporaryDirectory() as tmp:
            bundle, out = Path(tmp) / "bundle", Path(tmp) / "out"
            bundle.mkdir()
            with gzip.open(bundle / "bertbench.gz", "wb") as f:
                f.write(b"#!/bin/sh\necho bertbench 0\n")
            path = gc.unpack_binary(bundle, out)
            self.assertEqual(path, out / "bin" / "bertbench")
            self.assertTrue(os.access(path, os.X_OK))
            self.assertEqual(path.read_bytes(), b"#!/bin/sh\necho bertbench 0\n")
            (bundle / "bertbench").write_text("plain")
            self.assertEqual(gc.unpack_binary(bundle, out), bundle / "bertbench")

    def test_differences_are_the_largest_over_rows(self):
        self.assertEqual(gc.max_diff([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.5], [3.0, 3.0]]), 1.0)


if __name__ == "__main__":
    unittest.main()
