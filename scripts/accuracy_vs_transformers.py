#!/usr/bin/env python3
"""Accuracy side by side: bertbench's `eval` and `train` against transformers + PyTorch.

Not a test and not run in CI; start it through scripts/accuracy-vs-transformers.sh, which
prepares the virtualenv, the bertbench binary and the `accuracy_probe` example.

1. Start: the real all-MiniLM-L6-v2 encoder with one freshly initialised QA head
   (torch seed --head-seed), saved once as OUT/start (config.json, model.safetensors,
   tokenizer files). Both trainers start from exactly these weights.
2. Fine-tuning, for every --seeds value on both sides, on the first --train-questions of the
   training file, windows of --max-seq-length with --doc-stride, --steps optimizer steps:
   - bertbench: `bertbench train` (AdamW, linear schedule with 10% warm-up, clipping at 1.0,
     weight decay 0.01 except biases and LayerNorm weights);
   - PyTorch: the same recipe written as the Trainer runs it (torch.optim.AdamW,
     get_linear_schedule_with_warmup, clip_grad_norm_), on windows made by transformers' fast
     tokenizer as run_qa.py's prepare_train_features makes them, in the very order bertbench
     draws for that seed (`accuracy_probe order`). Only the dropout masks differ (each side's
     own generator), which is what the two seeds per side measure.
   Loss curves go to loss_curves.csv and loss_curves.png.
3. Evaluation of every fine-tuned checkpoint on the first --dev-questions dev questions:
   - bertbench: `bertbench eval` (its predictions.json and EM/F1), and its logits per window
     (`accuracy_probe logits`, the same code path);
   - transformers: each window run alone (no padding) through BertForQuestionAnswering, decoded
     two ways: run_qa.py's postprocess_qa_predictions (20 best starts/ends over every position,
     then the context filter) and context-only candidates (bertbench's rule);
   - all scored with the official v1.1 metric (evaluate-v1.1.py's rules, below), the largest
     logit difference over real tokens, the share of identical answers, and the questions that
     differ with both answers.
4. summary.md (machine, date, commit, versions, every number above) and results.json.

With --int8 (on every evaluated checkpoint), what int8 costs on the same questions and
windows, three ways: `bertbench eval --dtype int8`; ONNX Runtime's int8 recipe (the export's
transformer-optimized graph through quantize_dynamic, per-channel; the same code as
bench_vs_python.py's) against its own fp32 export; PyTorch's dynamic quantization
(quantize_dynamic of the Linear layers) against transformers fp32. Each with EM/F1, the F1
change and the share of answers that changed.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime as dt
import gzip
import importlib.metadata
import json
import os
import platform
import re
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MINILM = ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder (default accuracy-results/<date-time>)")
    p.add_argument("--train-file", type=Path, default=SHARED / "data/squad/train-v1.1-derived.json.gz")
    p.add_argument("--dev-file", type=Path, default=SHARED / "data/squad/dev-v1.1.json.gz")
    p.add_argument("--train-questions", type=int, default=2000)
    p.add_argument("--dev-questions", type=int, default=500)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--doc-stride", type=int, default=32)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--head-seed", type=int, default=0, help="torch seed of the shared QA head")
    p.add_argument("--dropout-control", type=int, default=101, metavar="SEED",
                   help="also train PyTorch with the first seed's data order but this dropout seed, "
                        "to measure what dropout alone does to the curve (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-only", type=Path, metavar="CHECKPOINT",
                   help="skip training: compare eval on this checkpoint directory only")
    p.add_argument("--int8", action="store_true",
                   help="also measure what int8 costs in EM/F1 on every evaluated checkpoint: "
                        "bertbench --dtype int8, ONNX Runtime's quantize_dynamic, PyTorch's")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# SQuAD v1.1 official metric (the rules of evaluate-v1.1.py)

def normalize_answer(s: str) -> str:
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score(prediction: str, ground_truth: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def score(examples: list[dict], predictions: dict[str, str]) -> dict:
    em = f1 = 0.0
    for ex in examples:
        golds = [a["text"] for a in ex["answers"]]
        pred = predictions.get(ex["id"], "")
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    n = len(examples)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def first_questions(path: Path, n: int) -> list[dict]:
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)["data"]
    out = []
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                if len(out) == n:
                    return out
                out.append({"id": qa["id"], "question": qa["question"], "context": para["context"],
                            "answers": qa["answers"]})
    return out


# ---------------------------------------------------------------------------------------------
# Windows as run_qa.py makes them

def windows(tok, examples, max_len, stride, pad):
    return tok([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
               truncation="only_second", max_length=max_len, stride=stride,
               return_overflowing_tokens=True, return_offsets_mapping=True,
               padding="max_length" if pad else False)


def train_features(tok, examples, max_len, stride):
    """run_qa.py's prepare_train_features, with bertbench's one documented fix: an answer
    starting in a window's last context token is labelled there (run_qa.py walks past the
    context and labels the window's last position)."""
    enc = windows(tok, examples, max_len, stride, pad=True)
    feats = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        seq = enc.sequence_ids(i)
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        start = end = 0  # [CLS]
        if ex["answers"]:
            a = ex["answers"][0]
            s_char, e_char = a["answer_start"], a["answer_start"] + len(a["text"])
            ts = 0
            while seq[ts] != 1:
                ts += 1
            te = len(ids) - 1
            while seq[te] != 1:
                te -= 1
            if offsets[ts][0] <= s_char and offsets[te][1] >= e_char:
                last = te
                while ts <= last and offsets[ts][0] <= s_char:
                    ts += 1
                start = ts - 1
                while offsets[te][1] >= e_char:
                    te -= 1
                end = te + 1
        feats.append({"input_ids": ids, "attention_mask": enc["attention_mask"][i],
                      "token_type_ids": enc["token_type_ids"][i], "start": start, "end": end})
    return feats


# ---------------------------------------------------------------------------------------------
# Decoding: run_qa.py's postprocess_qa_predictions (SQuAD v1) and the context-only rule

def decode(examples, wins, starts, ends, context_only, n_best=20, max_answer_length=30):
    by_example = collections.defaultdict(list)
    for w_i, w in enumerate(wins):
        by_example[w["example"]].append(w_i)
    preds = {}
    for e_i, ex in enumerate(examples):
        prelim = []
        for w_i in by_example[e_i]:
            offsets, s_log, e_log = wins[w_i]["offsets"], starts[w_i], ends[w_i]
            if context_only:
                ctx = [i for i, o in enumerate(offsets) if o is not None]
                top = lambda v: sorted(ctx, key=lambda i: (-v[i], i))[:n_best]  # noqa: E731
            else:
                # np.argsort(v)[-1 : -n_best - 1 : -1]
                top = lambda v: [int(i) for i in np.argsort(v)[-1: -n_best - 1: -1]]  # noqa: E731
            for s in top(s_log):
                for e in top(e_log):
                    if offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append((float(s_log[s] + e_log[e]), offsets[s][0], offsets[e][1]))
        prelim.sort(key=lambda c: -c[0])  # stable, as Python's sorted
        preds[ex["id"]] = ex["context"][prelim[0][1]:prelim[0][2]] if prelim else ""
    return preds


def transformers_logits(model, tok, examples, max_len, stride):
    """Every window alone, at its real length (no padding), as run_qa.py's n-best decoding
    reads them; offsets None outside the context."""
    enc = windows(tok, examples, max_len, stride, pad=False)
    wins, starts, ends = [], [], []
    with torch.inference_mode():
        for i, ids in enumerate(enc["input_ids"]):
            seq = enc.sequence_ids(i)
            out = model(input_ids=torch.tensor([ids]),
                        attention_mask=torch.tensor([enc["attention_mask"][i]]),
                        token_type_ids=torch.tensor([enc["token_type_ids"][i]]))
            starts.append(out.start_logits[0].numpy())
            ends.append(out.end_logits[0].numpy())
            wins.append({"example": enc["overflow_to_sample_mapping"][i], "input_ids": ids,
                         "offsets": [o if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]})
    return wins, starts, ends


# ---------------------------------------------------------------------------------------------

def run(cmd, log: Path | None = None):
    print("+ " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    if log is None:
        subprocess.run([str(c) for c in cmd], check=True)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([str(c) for c in cmd], check=True, stdout=f, stderr=subprocess.STDOUT)


def make_start(out: Path, head_seed: int) -> Path:
    start = out / "start"
    if (start / "model.safetensors").exists():
        return start
    torch.manual_seed(head_seed)
    model = BertForQuestionAnswering.from_pretrained(MINILM)
    model.save_pretrained(start)
    for name in TOKENIZER_FILES:
        if (MINILM / name).exists():
            shutil.copy(MINILM / name, start / name)
    return start


def train_bertbench(a, start: Path, seed: int, out: Path) -> Path:
    if (out / "model.safetensors").exists():
        return out
    run([os.environ["BERTBENCH"], "train", "--model", start, "--train-file", a.train_file,
         "--limit", a.train_questions, "--max-steps", a.steps, "--batch-size", a.batch_size,
         "--learning-rate", a.learning_rate, "--warmup-ratio", a.warmup_ratio,
         "--weight-decay", a.weight_decay, "--max-grad-norm", a.max_grad_norm,
         "--max-seq-length", a.max_seq_length, "--doc-stride", a.doc_stride,
         "--logging-steps", a.logging_steps, "--save-steps", 0, "--seed", seed,
         "--threads", a.threads, "--output-dir", out, "--overwrite-output-dir"],
        log=out.parent / f"{out.name}.log")
    return out


def bertbench_train_windows(out: Path) -> int:
    text = (out.parent / f"{out.name}.log").read_text()
    m = re.search(r"training on (\d+) windows", text)
    if not m:
        raise SystemExit(f"{out}.log: no window count found")
    return int(m.group(1))


def read_bertbench_log(out: Path) -> list[tuple[int, float]]:
    with open(out / "train_log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r["loss"]]


def train_torch(a, start: Path, seed: int, out: Path, feats: list[dict],
                dropout_seed: int | None = None) -> list[tuple[int, float]]:
    """`seed` draws the data order (as bertbench's --seed does); `dropout_seed` (default:
    `seed`) seeds torch's generator, which draws the dropout masks."""
    log_path = out / "train_log.csv"
    if (out / "model.safetensors").exists() and log_path.exists():
        with open(log_path) as f:
            return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    n = len(feats)
    per_epoch = -(-n // a.batch_size)
    epochs = -(-a.steps // per_epoch)
    orders = json.loads(subprocess.run([os.environ["BERTBENCH_PROBE"], "order", str(n), str(seed), str(epochs)],
                                       check=True, capture_output=True, text=True).stdout)
    torch.manual_seed(seed if dropout_seed is None else dropout_seed)
    model = BertForQuestionAnswering.from_pretrained(start)
    model.train()
    no_decay = lambda name: name.endswith("bias") or "layernorm" in name.lower()  # noqa: E731
    groups = [
        {"params": [p for n_, p in model.named_parameters() if not no_decay(n_)], "weight_decay": a.weight_decay},
        {"params": [p for n_, p in model.named_parameters() if no_decay(n_)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=a.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    warmup = int(math.ceil(a.warmup_ratio * a.steps))
    sched = get_linear_schedule_with_warmup(opt, warmup, a.steps)
    log, since, step, t0 = [], [], 0, time.time()
    for epoch in range(epochs):
        order = orders[epoch]
        for b in range(0, n, a.batch_size):
            if step == a.steps:
                break
            rows = [feats[i] for i in order[b:b + a.batch_size]]
            t = lambda k: torch.tensor([r[k] for r in rows])  # noqa: E731
            loss = model(input_ids=t("input_ids"), attention_mask=t("attention_mask"),
                         token_type_ids=t("token_type_ids"), start_positions=t("start"),
                         end_positions=t("end")).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            since.append(loss.item())
            if step % a.logging_steps == 0 or step == a.steps:
                log.append((step, sum(since) / len(since)))
                since = []
                print(f"  torch seed {seed}: step {step}/{a.steps} loss {log[-1][1]:.4f} "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (start / name).exists():
            shutil.copy(start / name, out / name)
    with open(log_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss"])
        w.writerows(log)
    return log


def compare_eval(a, ckpt: Path, out: Path, dev: list[dict]) -> dict:
    """bertbench eval vs transformers on one checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    ev = out / "bertbench-eval"
    if not (ev / "eval_results.json").exists():
        run([os.environ["BERTBENCH"], "eval", "--model", ckpt, "--dataset", a.dev_file,
             "--limit", a.dev_questions, "--max-seq-length", a.max_seq_length, "--doc-stride", a.doc_stride,
             "--threads", a.threads, "--output-dir", ev, "--overwrite"], log=out / "bertbench-eval.log")
    bb_preds = json.loads((ev / "predictions.json").read_text())
    bb_results = json.loads((ev / "eval_results.json").read_text())
    probe = out / "bertbench-logits.jsonl"
    if not probe.exists():
        run([os.environ["BERTBENCH_PROBE"], "logits", ckpt, a.dev_file, a.dev_questions,
             a.max_seq_length, a.doc_stride, probe])
    bb_windows = [json.loads(line) for line in probe.read_text().splitlines()]

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = BertForQuestionAnswering.from_pretrained(ckpt).eval()
    wins, starts, ends = transformers_logits(model, tok, dev, a.max_seq_length, a.doc_stride)
    if len(wins) != len(bb_windows) or any(w["input_ids"] != b["input_ids"] for w, b in zip(wins, bb_windows)):
        raise SystemExit(f"{ckpt}: bertbench's windows differ from transformers' tokenizer's")
    max_diff = max(float(np.max(np.abs(np.asarray(b[k], dtype=np.float32) - t)))
                   for b, s, e in zip(bb_windows, starts, ends) for k, t in (("start_logits", s), ("end_logits", e)))

    hf = decode(dev, wins, starts, ends, context_only=False)
    ctx = decode(dev, wins, starts, ends, context_only=True)
    differ = lambda other: [  # noqa: E731
        {"id": ex["id"], "question": ex["question"], "bertbench": bb_preds.get(ex["id"]), "transformers": other[ex["id"]],
         "gold": [g["text"] for g in ex["answers"]]}
        for ex in dev if bb_preds.get(ex["id"]) != other[ex["id"]]]
    d_ctx, d_hf = differ(ctx), differ(hf)
    n = len(dev)
    result = {
        "checkpoint": str(ckpt),
        "questions": n,
        "windows": len(wins),
        "max_abs_logit_diff": max_diff,
        "bertbench": {"exact_match": bb_results["exact_match"], "f1": bb_results["f1"],
                      "rescored": score(dev, bb_preds)},
        "transformers_context_only": score(dev, ctx),
        "transformers_run_qa": score(dev, hf),
        "identical_vs_context_only": (n - len(d_ctx)) / n,
        "identical_vs_run_qa": (n - len(d_hf)) / n,
        "empty_bertbench": sum(1 for v in bb_preds.values() if v == ""),
        "empty_run_qa": sum(1 for v in hf.values() if v == ""),
        "differ_vs_context_only": d_ctx,
        "differ_vs_run_qa": d_hf,
    }
    if a.int8:
        result["int8"] = int8_eval(a, ckpt, out, dev, model, tok, bb_preds, ctx, bb_results)
    (out / "compare.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


def session_logits(session, tok, examples, max_len, stride):
    """transformers_logits for an ONNX Runtime session: every window alone, no padding."""
    enc = windows(tok, examples, max_len, stride, pad=False)
    names = {i.name for i in session.get_inputs()}
    starts, ends = [], []
    for i, ids in enumerate(enc["input_ids"]):
        feed = {"input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.array([enc["attention_mask"][i]], dtype=np.int64),
                "token_type_ids": np.array([enc["token_type_ids"][i]], dtype=np.int64)}
        s, e = session.run(["start_logits", "end_logits"], {k: v for k, v in feed.items() if k in names})
        starts.append(s[0])
        ends.append(e[0])
    return starts, ends


def int8_eval(a, ckpt: Path, out: Path, dev: list[dict], model, tok, bb_preds, ctx, bb_results) -> dict:
    """What int8 costs on these questions: bertbench fp32 -> int8, ONNX Runtime fp32 -> its
    int8 recipe, transformers fp32 -> PyTorch's dynamic quantization; answers decoded with the
    context-only rule (bertbench's) for the Python runtimes."""
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_vs_python as bvp

    ev = out / "bertbench-eval-int8"
    if not (ev / "eval_results.json").exists():
        run([os.environ["BERTBENCH"], "eval", "--model", ckpt, "--dataset", a.dev_file, "--dtype", "int8",
             "--limit", a.dev_questions, "--max-seq-length", a.max_seq_length, "--doc-stride", a.doc_stride,
             "--threads", a.threads, "--output-dir", ev, "--overwrite"], log=out / "bertbench-eval-int8.log")
    bb8 = json.loads((ev / "predictions.json").read_text())
    onnx_path = out / "onnx" / "model.onnx"
    eager = BertForQuestionAnswering.from_pretrained(ckpt, attn_implementation="eager").eval()
    bvp.export_onnx(eager, "bert", onnx_path)
    graphs = bvp.quantize_onnx(onnx_path, json.loads((Path(ckpt) / "config.json").read_text()))
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    preds = {}
    for name, path in (("ort-fp32", onnx_path), ("ort-int8", bvp.int8_onnx_path(onnx_path))):
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        starts, ends = session_logits(session, tok, dev, a.max_seq_length, a.doc_stride)
        wins = windows(tok, dev, a.max_seq_length, a.doc_stride, pad=False)
        preds[name] = decode(dev, [{"example": wins["overflow_to_sample_mapping"][i],
                                    "offsets": [o if s == 1 else None for o, s in
                                                zip(wins["offset_mapping"][i], wins.sequence_ids(i))]}
                                   for i in range(len(wins["input_ids"]))], starts, ends, context_only=True)
    q_wins, q_starts, q_ends = transformers_logits(bvp.torch_int8(model), tok, dev, a.max_seq_length, a.doc_stride)
    preds["torch-int8"] = decode(dev, q_wins, q_starts, q_ends, context_only=True)
    changed = lambda x, y: sum(1 for ex in dev if x.get(ex["id"]) != y.get(ex["id"])) / len(dev)  # noqa: E731
    rows = {}
    for runtime, fp32, int8 in (("bertbench", bb_preds, bb8), ("ONNX Runtime", preds["ort-fp32"], preds["ort-int8"]),
                                ("PyTorch", ctx, preds["torch-int8"])):
        f, q = score(dev, fp32), score(dev, int8)
        rows[runtime] = {"fp32": f, "int8": q, "f1_change": q["f1"] - f["f1"],
                         "em_change": q["exact_match"] - f["exact_match"], "answers_changed": changed(fp32, int8)}
    return {"runtimes": rows, "ort_graphs": graphs,
            "bertbench_int8_reported": json.loads((ev / "eval_results.json").read_text())}


def plot_curves(curves: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    colors = collections.defaultdict(lambda: "tab:green", {"bertbench": "tab:blue", "pytorch": "tab:orange"})
    styles = ["-", "--", ":", "-."]
    for (side, seed), pts in sorted(curves.items()):
        k = sorted({s for (sd, s) in curves if sd == side}).index(seed)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[k % len(styles)], color=colors[side],
                label=f"{side} seed {seed}", linewidth=1.4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean over logging interval)")
    ax.set_title("Fine-tuning all-MiniLM-L6-v2 on SQuAD: bertbench vs PyTorch, same start, data and order")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def mean_abs_diff(x, y):
    common = sorted(set(dict(x)) & set(dict(y)))
    dx, dy = dict(x), dict(y)
    return sum(abs(dx[s] - dy[s]) for s in common) / max(len(common), 1)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    out = a.out or ROOT / "accuracy-results" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    dev = first_questions(a.dev_file, a.dev_questions)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
              "cpu": cpu_name(), "threads": a.threads, "args": {k: str(v) for k, v in vars(a).items()},
              "versions": {p: importlib.metadata.version(p) for p in ("torch", "transformers")}}
    evals = {}
    curves = {}
    if a.eval_only:
        evals["given"] = compare_eval(a, a.eval_only, out / "eval" / "given", dev)
    else:
        start = make_start(out, a.head_seed)
        tok = AutoTokenizer.from_pretrained(start)
        train = first_questions(a.train_file, a.train_questions)
        feats = train_features(tok, train, a.max_seq_length, a.doc_stride)
        report["train_windows"] = len(feats)
        evals["start (fresh head)"] = compare_eval(a, start, out / "eval" / "start", dev)
        for seed in a.seeds:
            bdir = train_bertbench(a, start, seed, out / "train" / f"bertbench-seed{seed}")
            curves[("bertbench", seed)] = read_bertbench_log(bdir)
            if bertbench_train_windows(bdir) != len(feats):
                raise SystemExit(f"bertbench trained on {bertbench_train_windows(bdir)} windows, "
                                 f"transformers' tokenizer made {len(feats)}: the data orders would differ")
            tdir = out / "train" / f"pytorch-seed{seed}"
            tdir.mkdir(parents=True, exist_ok=True)
            curves[("pytorch", seed)] = train_torch(a, start, seed, tdir, feats)
            for side, d in (("bertbench", bdir), ("pytorch", tdir)):
                evals[f"{side}-seed{seed}"] = compare_eval(a, d, out / "eval" / f"{side}-seed{seed}", dev)
        if a.dropout_control:
            s0, d = a.seeds[0], a.dropout_control
            cdir = out / "train" / f"pytorch-seed{s0}-dropout{d}"
            cdir.mkdir(parents=True, exist_ok=True)
            curves[(f"pytorch, dropout seed {d}", s0)] = train_torch(a, start, s0, cdir, feats, dropout_seed=d)
            evals[f"pytorch-seed{s0}-dropout{d}"] = compare_eval(a, cdir, out / "eval" / cdir.name, dev)
        with open(out / "loss_curves.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["trainer", "seed", "step", "loss"])
            for (side, seed), pts in sorted(curves.items()):
                w.writerows((side, seed, s, l) for s, l in pts)
        plot_curves(curves, out / "loss_curves.png")
        seeds = a.seeds
        noise = {}
        for side in ("bertbench", "pytorch"):
            pairs = [(x, y) for i, x in enumerate(seeds) for y in seeds[i + 1:]]
            noise[side] = [mean_abs_diff(curves[(side, x)], curves[(side, y)]) for x, y in pairs]
        noise["between"] = [mean_abs_diff(curves[("bertbench", s)], curves[("pytorch", s)]) for s in seeds]
        if a.dropout_control:
            s0 = seeds[0]
            noise["dropout_only"] = mean_abs_diff(curves[("pytorch", s0)],
                                                  curves[(f"pytorch, dropout seed {a.dropout_control}", s0)])
        report["loss_noise"] = noise
        report["final_loss"] = {f"{side}-seed{seed}": pts[-1][1] for (side, seed), pts in curves.items()}
    report["evals"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("differ")} for k, v in evals.items()}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    write_summary(out, a, report, evals)
    print((out / "summary.md").read_text())


def write_summary(out: Path, a, report: dict, evals: dict):
    L = [f"# Accuracy side by side: bertbench vs transformers ({report['date']})", "",
         f"Commit {report['commit']}; {report['cpu']}, {a.threads} threads; torch {report['versions']['torch']}, "
         f"transformers {report['versions']['transformers']}.", "",
         f"Windows of {a.max_seq_length} tokens, stride {a.doc_stride}; first {a.dev_questions} dev questions.", ""]
    if "loss_noise" in report:
        n = report["loss_noise"]
        L += [f"## Fine-tuning: {a.steps} steps, batch {a.batch_size}, lr {a.learning_rate}, "
              f"warm-up {a.warmup_ratio}, first {a.train_questions} training questions "
              f"({report['train_windows']} windows), seeds {' '.join(map(str, a.seeds))}", "",
              "Mean absolute difference between logged losses (each a mean over "
              f"{a.logging_steps} steps):", "",
              f"- between seeds, bertbench: {', '.join(f'{x:.4f}' for x in n['bertbench'])}",
              f"- between seeds, PyTorch: {', '.join(f'{x:.4f}' for x in n['pytorch'])}",
              f"- between bertbench and PyTorch, same seed: {', '.join(f'{x:.4f}' for x in n['between'])}",
              ] + ([f"- PyTorch, seed {a.seeds[0]}'s data order, dropout seed {a.dropout_control} instead of "
                    f"{a.seeds[0]} (dropout alone): {n['dropout_only']:.4f}"] if "dropout_only" in n else []) + ["",
              "Final logged loss: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(report["final_loss"].items())), ""]
    L += ["## Evaluation", "",
          "| checkpoint | bertbench EM / F1 | transformers, context-only decoding EM / F1 | identical answers | "
          "transformers, run_qa.py decoding EM / F1 | identical answers | max logit diff |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for k, r in evals.items():
        b, c, h = r["bertbench"], r["transformers_context_only"], r["transformers_run_qa"]
        L.append(f"| {k} | {b['exact_match']:.2f} / {b['f1']:.2f} | {c['exact_match']:.2f} / {c['f1']:.2f} | "
                 f"{100 * r['identical_vs_context_only']:.1f}% | {h['exact_match']:.2f} / {h['f1']:.2f} | "
                 f"{100 * r['identical_vs_run_qa']:.1f}% | {r['max_abs_logit_diff']:.2e} |")
    int8 = [(k, r["int8"]) for k, r in evals.items() if "int8" in r]
    if int8:
        L += ["", "## What int8 costs", "",
              "Each runtime's int8 model against its own fp32 one, same questions and windows (answers decoded "
              "with the context-only rule for ONNX Runtime and PyTorch, bertbench's own for bertbench).", "",
              "| checkpoint | runtime | fp32 EM / F1 | int8 EM / F1 | F1 change | answers changed |",
              "|---|---|---:|---:|---:|---:|"]
        for k, q in int8:
            for rt, r in q["runtimes"].items():
                L.append(f"| {k} | {rt} | {r['fp32']['exact_match']:.2f} / {r['fp32']['f1']:.2f} | "
                         f"{r['int8']['exact_match']:.2f} / {r['int8']['f1']:.2f} | {r['f1_change']:+.2f} | "
                         f"{100 * r['answers_changed']:.1f}% |")
        for k, q in int8:
            g = q["ort_graphs"]
            L += ["", f"{k}: ONNX Runtime's int8 graph: fused {g['fused_ops']}, quantized {g['quantized_ops']}."]
    for k, r in evals.items():
        for label, key in (("context-only decoding", "differ_vs_context_only"), ("run_qa.py decoding", "differ_vs_run_qa")):
            if r[key]:
                L += ["", f"{k}: answers that differ from transformers with {label} ({len(r[key])}):", ""]
                for d in r[key][:10]:
                    L.append(f"- {d['id']}: bertbench {d['bertbench']!r}, transformers {d['transformers']!r} "
                             f"(gold {d['gold'][0]!r})")
    (out / "summary.md").write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    import math

    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForQuestionAnswering, get_linear_schedule_with_warmup

    main()
