"""Tests of scripts/serve_vs_python.py's own logic (no PyTorch, no server): reading oha's JSON,
choosing the rate a server sustains, and the SQuAD questions as request bodies. Run by
`cargo test` (tests/scripts.rs) or directly:

    python3 -m unittest discover -s scripts/tests -v
"""

from __future__ import annotations

import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import serve_vs_python as svp  # noqa: E402

# The shape oha 1.16 prints with --output-format json (fields this script reads).
OHA = {
    "summary": {"successRate": 0.9, "total": 10.0, "requestsPerSec": 10.0},
    "latencyPercentiles": {"p50": 0.05, "p90": 0.09, "p99": 0.2},
    "statusCodeDistribution": {"200": 90, "503": 6},
    "errorDistribution": {"connection closed": 4, "operation was canceled": 2},
}


def row(offered, achieved, p99, errors=0):
    return {"offered_qps": offered, "achieved_qps": achieved, "p99_ms": p99, "errors": errors}


class OhaAndLadder(unittest.TestCase):
    def test_answers_are_200s_and_everything_else_an_error(self):
        r = svp.parse_oha(OHA, 10.0)
        self.assertEqual((r["ok"], r["errors"], r["sent"]), (90, 10, 100))
        self.assertEqual(r["cancelled_by_oha"], 2)
        self.assertAlmostEqual(r["achieved_qps"], 9.0)
        self.assertAlmostEqual(r["p99_ms"], 200.0)
        self.assertEqual(r["status_codes"], {"200": 90, "503": 6})
        empty = svp.parse_oha({"summary": {"total": 1.0}}, 5.0)
        self.assertEqual((empty["ok"], empty["p99_ms"]), (0, None))

    def test_the_sustained_rate_meets_the_bound_without_errors_or_falling_behind(self):
        ladder = [row(5, 5.0, 80), row(10, 9.9, 150), row(15, 13.0, 200),
                  row(20, 19.5, 290, errors=1), row(25, 24.0, 400)]
        self.assertEqual(svp.sustained(ladder, 300)["offered_qps"], 10)
        self.assertIsNone(svp.sustained([row(5, 5.0, 500)], 300))


class Bodies(unittest.TestCase):
    def test_the_first_questions_become_task_bodies_one_per_line(self):
        squad = {"data": [{"title": "t", "paragraphs": [
            {"context": "Jane wrote it.", "qas": [
                {"id": "a", "question": "Who?", "answers": [{"text": "Jane", "answer_start": 0}]},
                {"id": "b", "question": "What?", "answers": [{"text": "it", "answer_start": 11}]},
            ]}]}]}
        with tempfile.TemporaryDirectory() as d:
            data = Path(d) / "squad.json"
            data.write_text(json.dumps(squad))
            out = Path(d) / "bodies.jsonl"
            rows = svp.bodies(data, 1, out)
            self.assertEqual([r["id"] for r in rows], ["a"])
            lines = out.read_text().splitlines()
            self.assertEqual(len(lines), 1)
            self.assertEqual(json.loads(lines[0]), {
                "inputs": {"question": "Who?", "context": "Jane wrote it."},
                "parameters": {"max_answer_len": 30}})


if __name__ == "__main__":
    unittest.main()
