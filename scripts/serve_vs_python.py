#!/usr/bin/env python3
"""Open-loop side by side of `bertbench serve` against the servers a user would deploy
instead: transformers' question-answering pipeline behind FastAPI/uvicorn on PyTorch, and the
same pipeline on ONNX Runtime (scripts/qa_server.py), one process each, same threads, same
weights, all speaking Hugging Face's QA task at `POST /`.

Not a test and not run in CI; start it through scripts/serve-vs-python.sh, which prepares the
Python environment (transformers 4.x), the bertbench binary and oha.

Per model:
  1. the model: a directory given with --model-dir (e.g. a fine-tuned checkpoint), or a base
     model random-initialised from transformers' config (torch seed 0) with the
     bert-base-uncased vocabulary (--vocab); exported to ONNX (opset 17, dynamic axes) and,
     with --precision int8, quantized as ONNX Runtime's recipe for BERT does it (the
     transformer optimizer's fused graph, `quantize_dynamic`, per-channel) while PyTorch runs
     `quantize_dynamic` on its Linear layers and bertbench `--dtype int8`;
  2. the first --questions SQuAD dev questions as request bodies (one JSON per line, each with
     `max_answer_len` 30, bertbench's and run_qa.py's, so both decoders have one bound);
  3. per server, in its own process: each question sent once, one at a time (the answers, and
     the closed-loop rate), then oha (crates.io; `-q` open-loop rate, `--latency-correction`
     for coordinated omission, bodies drawn from the file) at each rate of a ladder, --duration
     each: --rates for every server, or by default the server's own one-at-a-time rate times
     0.5 to 1.5 (so the ladder brackets each server's capacity, however far apart they are);
  4. results.json (everything), summary.md: per server and rate the achieved QPS, p50/p90/p99
     and errors; the highest rate each sustains with p99 <= --p99-bound, no error and at least
     95% of the offered rate; the answers compared with bertbench's on the questions both
     answered; peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import signal
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_vs_python as bvp  # noqa: E402  (model configs, ONNX export and int8 recipe)
from accuracy_vs_transformers import first_questions  # noqa: E402

SERVERS = ("bertbench", "torch", "ort")
SERVER_NAMES = {"bertbench": "bertbench serve", "torch": "PyTorch pipeline (FastAPI)",
                "ort": "ONNX Runtime pipeline (FastAPI)"}
LADDER = (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)


class Failure(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_model(name: str, args, out: Path) -> dict:
    """The model directory (with tokenizer), its ONNX export, and the int8 ONNX model."""
    import torch
    from transformers import (AutoModelForQuestionAnswering, BertTokenizerFast,
                              DistilBertTokenizerFast)

    if Path(name).is_dir():
        model_dir = Path(name).resolve()
        label = model_dir.name
        family = bvp.family_of(json.loads((model_dir / "config.json").read_text())
                               .get("model_type", "bert"))
        work = out / "models" / bvp.model_dir_name(label)
    else:
        label = name
        family = bvp.family_of(name)
        work = out / "models" / bvp.model_dir_name(name)
        model_dir = work / "hf"
        if not (model_dir / "model.safetensors").is_file() or not (
                model_dir / "tokenizer.json").is_file():
            torch.manual_seed(bvp.TORCH_SEED)
            model = bvp.qa_model_class(family)(bvp.build_config(name)).eval()
            model.save_pretrained(model_dir)
            # DistilBERT's tokenizer: the same vocabulary, no token type ids.
            tokenizer = DistilBertTokenizerFast if family == "distilbert" else BertTokenizerFast
            tokenizer(vocab_file=str(args.vocab), do_lower_case=True).save_pretrained(model_dir)
            del model
    check_tokenizer(model_dir, family)
    onnx_dir = work / "onnx"
    onnx = onnx_dir / "model.onnx"
    if not onnx.is_file():
        model = AutoModelForQuestionAnswering.from_pretrained(
            model_dir, attn_implementation="eager", torch_dtype=torch.float32).eval()
        bvp.export_onnx(model, family, onnx)
        del model
    shutil.copy(model_dir / "config.json", onnx_dir / "config.json")
    onnx_file = "model.onnx"
    if args.precision == "int8":
        if not bvp.int8_onnx_path(onnx).is_file():
            bvp.quantize_onnx(onnx, json.loads((model_dir / "config.json").read_text()))
        onnx_file = bvp.int8_onnx_path(onnx).name
    return {"label": label, "family": family, "model_dir": str(model_dir),
            "onnx_dir": str(onnx_dir), "onnx_file": onnx_file}


def check_tokenizer(model_dir: Path, family: str) -> None:
    """A saved DistilBERT tokenizer must not produce token type ids (the model takes none)."""
    from transformers import AutoTokenizer

    if family == "distilbert" and "token_type_ids" in AutoTokenizer.from_pretrained(model_dir)(
            "a", "b"):
        raise Failure(f"{model_dir}: a DistilBERT tokenizer must not give token_type_ids")


def bodies(dataset: Path, n: int, path: Path) -> list[dict]:
    """The first `n` questions of a SQuAD file as Hugging Face task bodies, one per line."""
    rows = [{"id": q["id"], "body": {
        "inputs": {"question": q["question"], "context": q["context"]},
        "parameters": {"max_answer_len": 30}}} for q in first_questions(dataset, n)]
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r["body"], ensure_ascii=False) + "\n")
    return rows


def http(url: str, body: dict | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start_server(kind: str, model: dict, args, port: int, logs: Path) -> subprocess.Popen:
    if kind == "bertbench":
        cmd = [args.bertbench, "serve", "--model", model["model_dir"], "--port", str(port),
               "--threads", str(args.threads), "--offline", "--max-queue-delay-ms", "0"]
        if args.precision != "fp32":
            cmd += ["--dtype", args.precision]
        ready = "/ready"
    else:
        backend = {"torch": "torch" if args.precision == "fp32" else "torch-int8",
                   "ort": "ort"}[kind]
        cmd = [sys.executable, str(ROOT / "scripts/qa_server.py"), "--backend", backend,
               "--model", model["model_dir"], "--onnx-dir", model["onnx_dir"],
               "--onnx-file", model["onnx_file"], "--threads", str(args.threads),
               "--port", str(port)]
        ready = "/health"
    log_file = open(logs / f"{kind}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    begin = time.time()
    while True:
        if proc.poll() is not None:
            raise Failure(f"{' '.join(cmd)} exited with {proc.returncode}: see {log_file.name}")
        try:
            if http(f"http://127.0.0.1:{port}{ready}", timeout=2)[0] == 200:
                return proc
        except OSError:
            pass
        if time.time() - begin > 300:
            proc.kill()
            raise Failure(f"{kind} was not ready within 300 s: see {log_file.name}")
        time.sleep(0.2)


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sequential(port: int, rows: list[dict]) -> dict:
    """Every question once, one at a time: the answers and the closed-loop rate."""
    answers, latencies, errors = {}, [], 0
    begin = time.perf_counter()
    for r in rows:
        t = time.perf_counter()
        status, body = http(f"http://127.0.0.1:{port}/", r["body"])
        latencies.append(time.perf_counter() - t)
        if status == 200:
            answers[r["id"]] = json.loads(body)["answer"]
        else:
            errors += 1
    took = time.perf_counter() - begin
    latencies.sort()
    return {"answers": answers, "errors": errors, "qps": len(rows) / took,
            "p50_ms": latencies[len(latencies) // 2] * 1e3}


def oha(args, port: int, rate: float, body_file: Path) -> dict:
    cmd = [args.oha, "--no-tui", "--output-format", "json", "-z", args.duration, "-q",
           f"{rate:.3f}", "--latency-correction", "-w", "-c", str(args.connections),
           "-m", "POST", "-T", "application/json", "-Z", str(body_file),
           f"http://127.0.0.1:{port}/"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return parse_oha(json.loads(proc.stdout), rate)


# What oha reports for requests it cancelled itself (at the run's end): not the server's.
CANCELLED = "operation was canceled"


def parse_oha(out: dict, rate: float) -> dict:
    """One oha run's JSON (`--output-format json`) as this script's row: answers are the
    200s, errors everything else (other statuses, and connection or timeout errors) except
    requests oha cancelled itself, counted apart."""
    codes = {str(k): v for k, v in (out.get("statusCodeDistribution") or {}).items()}
    kinds = out.get("errorDistribution") or {}
    ok = codes.get("200", 0)
    cancelled = kinds.get(CANCELLED, 0)
    total = ok + sum(v for k, v in codes.items() if k != "200") + \
        sum(v for k, v in kinds.items() if k != CANCELLED)
    pct = out.get("latencyPercentiles") or {}
    duration = out["summary"].get("total") or 1.0
    ms = lambda k: None if pct.get(k) is None else pct[k] * 1e3  # noqa: E731
    return {"offered_qps": rate, "achieved_qps": ok / duration, "sent": total, "ok": ok,
            "errors": total - ok, "cancelled_by_oha": cancelled, "p50_ms": ms("p50"),
            "p90_ms": ms("p90"), "p99_ms": ms("p99"), "status_codes": codes,
            "error_kinds": kinds}


def sustained(runs: list[dict], bound_ms: float) -> dict | None:
    good = [r for r in runs if r["errors"] == 0 and r["p99_ms"] is not None
            and r["p99_ms"] <= bound_ms and r["achieved_qps"] >= 0.95 * r["offered_qps"]]
    return max(good, key=lambda r: r["achieved_qps"]) if good else None


def versions() -> dict:
    out = {}
    for pkg in ("torch", "transformers", "onnxruntime", "fastapi", "uvicorn"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def summary(report: dict) -> str:
    lines = [f"# bertbench serve against the Python servers ({report['precision']})", "",
             f"{report['date']}, bertbench {report['commit']}, {report['cpu']}, "
             f"{report['threads']} threads per server, oha {report['oha_version']} "
             f"(open loop, --latency-correction), {report['duration']} per rate, "
             f"bodies drawn at random from the first {report['questions']} SQuAD dev questions; "
             f"{report['precision']} on every server; p99 bound "
             f"{report['p99_bound_ms']:.0f} ms. Python: "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", ""]
    for m in report["models"]:
        lines += [f"## {m['label']}", "",
                  "| server | one at a time (q/s) | sustained QPS at p99 <= bound | "
                  "vs bertbench | answers = bertbench's | peak RSS (MB) |",
                  "|---|---:|---:|---:|---:|---:|"]
        base = m["servers"]["bertbench"].get("sustained")
        for kind in SERVERS:
            s = m["servers"][kind]
            best = s.get("sustained")
            ratio = (base["achieved_qps"] / best["achieved_qps"]
                     if base and best else None)
            agree = s.get("agreement")
            lines.append(
                f"| {SERVER_NAMES[kind]} | {fmt(s['sequential']['qps'])} | "
                f"{fmt(best['achieved_qps']) if best else 'none'} | "
                f"{'-' if kind == 'bertbench' else fmt(ratio, '.2f') + 'x'} | "
                f"{'-' if kind == 'bertbench' else f'{agree[0]}/{agree[1]}'} | "
                f"{fmt(s.get('peak_rss_mb'), '.0f')} |")
        lines += ["", "| server | offered QPS | achieved | p50 ms | p90 ms | p99 ms | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for kind in SERVERS:
            for r in m["servers"][kind]["ladder"]:
                lines.append(f"| {SERVER_NAMES[kind]} | {r['offered_qps']:.1f} | "
                             f"{r['achieved_qps']:.1f} | {fmt(r['p50_ms'])} | "
                             f"{fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {r['errors']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+",
                    default=["distilbert-base-uncased", "bert-base-uncased"],
                    help="base model names (random-initialised) or model directories")
    ap.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--duration", default="15s", help="oha run per rate")
    ap.add_argument("--rates", type=float, nargs="+",
                    help="offered QPS ladder for every server (default: each server's own "
                    "one-at-a-time rate x " + ", ".join(map(str, LADDER)) + ")")
    ap.add_argument("--p99-bound", type=float, default=300.0, help="ms")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    ap.add_argument("--dataset", type=Path,
                    default=ROOT.parent / "shared/data/squad/dev-v1.1.json.gz")
    ap.add_argument("--vocab", type=Path,
                    default=ROOT.parent / "shared/vocab/bert-base-uncased-vocab.txt")
    ap.add_argument("--output-dir", type=Path,
                    default=ROOT / "serve-vs-python" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--resummarize", type=Path, metavar="RESULTS_JSON",
                    help="only rewrite summary.md beside a results.json (its rows re-judged)")
    args = ap.parse_args()
    if args.resummarize:
        report = json.loads(args.resummarize.read_text())
        for m in report["models"]:
            for s in m["servers"].values():
                for row in s["ladder"]:
                    if "cancelled_by_oha" not in row:  # written before oha's own were apart
                        row["cancelled_by_oha"] = row["error_kinds"].get(CANCELLED, 0)
                        row["errors"] -= row["cancelled_by_oha"]
                        row["sent"] -= row["cancelled_by_oha"]
                s["sustained"] = sustained(s["ladder"], report["p99_bound_ms"])
        args.resummarize.write_text(json.dumps(report, indent=1))
        (args.resummarize.parent / "summary.md").write_text(summary(report))
        print(summary(report))
        return
    args.bertbench = os.environ.get("BERTBENCH") or str(ROOT / "target/release/bertbench")
    args.oha = os.environ.get("OHA") or "oha"
    if "bertbench" not in args.servers:
        raise Failure("bertbench must be among --servers: the answers are compared with its")
    for p in (args.dataset, args.vocab):
        if not p.is_file():
            raise Failure(f"{p}: no such file")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    body_file = out / "bodies.jsonl"
    rows = bodies(args.dataset, args.questions, body_file)
    oha_version = subprocess.run([args.oha, "--version"], capture_output=True,
                                 text=True).stdout.strip().removeprefix("oha ")
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": commit, "cpu": f"{bvp.cpu_model()} ({bvp.cpu_identity()})", "machine": platform.machine(),
              "threads": args.threads, "precision": args.precision,
              "questions": len(rows), "duration": args.duration,
              "p99_bound_ms": args.p99_bound, "oha_version": oha_version,
              "versions": versions(), "models": []}
    for name in args.models:
        log(f"== {name}: preparing")
        model = prepare_model(name, args, out)
        logs = out / "logs" / bvp.model_dir_name(model["label"])
        logs.mkdir(parents=True, exist_ok=True)
        entry = {**model, "servers": {}}
        for kind in [k for k in SERVERS if k in args.servers]:
            log(f"== {name}: {SERVER_NAMES[kind]}")
            proc = start_server(kind, model, args, args.port, logs)
            try:
                seq = sequential(args.port, rows)
                log(f"   one at a time: {seq['qps']:.2f} q/s, p50 {seq['p50_ms']:.0f} ms")
                rates = args.rates or [round(seq["qps"] * f, 2) for f in LADDER]
                ladder = []
                for rate in rates:
                    r = oha(args, args.port, rate, body_file)
                    log(f"   {rate:6.2f} QPS offered: {r['achieved_qps']:.2f} achieved, "
                        f"p99 {fmt(r['p99_ms'])} ms, {r['errors']} errors")
                    ladder.append(r)
                rss = peak_rss_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            entry["servers"][kind] = {"sequential": seq, "ladder": ladder,
                                      "sustained": sustained(ladder, args.p99_bound),
                                      "peak_rss_mb": rss}
        mine = entry["servers"]["bertbench"]["sequential"]["answers"]
        for kind, s in entry["servers"].items():
            theirs = s["sequential"]["answers"]
            both = [q for q in mine if q in theirs]
            s["agreement"] = (sum(mine[q] == theirs[q] for q in both), len(both))
            s["disagreements"] = {q: [mine[q], theirs[q]] for q in both
                                  if mine[q] != theirs[q]}
        for s in entry["servers"].values():
            del s["sequential"]["answers"]
        report["models"].append(entry)
        (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "summary.md").write_text(summary(report))
    print(summary(report))
    log(f"results in {out}")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
