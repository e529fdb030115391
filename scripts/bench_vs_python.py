#!/usr/bin/env python3
"""Side-by-side benchmark: bertbench (candle, fp32, CPU) against PyTorch + transformers (eager
mode, no compilation) and ONNX Runtime (CPU execution provider), and, with --training, a
training step against PyTorch.

Not a test and not run in CI; start it through scripts/bench-vs-python.sh, which prepares the
virtualenv and the bertbench binary.

What it does, per model family:
  1. builds the model from transformers' config classes (the base models' defaults, no
     network), random-initialises the *ForQuestionAnswering model with a fixed torch seed and
     saves it (config.json + model.safetensors) into OUT/models/<name>/, which every runtime
     loads;
  2. inference only: exports it to ONNX (TorchScript exporter, opset 17, dynamic batch and
     sequence axes) and checks that PyTorch, ONNX Runtime and `bertbench logits` agree on a
     fixed padded batch (exits non-zero beyond --tolerance);
  3. times every (model, shape, runtime) in its own fresh process, shape by shape, for
     --rounds passes with the runtime order rotated each round, with one timing policy (the
     one bertbench uses, with the same settings) for all runtimes; records each process's
     peak resident set size (the kernel's high-water mark, from wait4);
  4. writes results.csv (tidy, one row per measurement with its raw samples), results.json
     (everything) and summary.md (a Markdown table with the machine and versions).

With --precision int8 every runtime runs its int8 model instead: ONNX Runtime the transformer
optimizer's fused graph of the export (`optimizer.optimize_model`, model type bert) quantized
with `quantize_dynamic` (per-channel int8 weights, uint8 activations); PyTorch the model after
`torch.ao.quantization.quantize_dynamic` (its Linear layers, qint8); bertbench `--dtype int8`.
The fp32 agreement check still runs (it checks the export), and the int8 models' logits are
compared with PyTorch's fp32 ones on the same batch (reported, not checked: quantization moves
them). With --precision bf16, PyTorch runs under `torch.autocast("cpu", dtype=torch.bfloat16)`
and bertbench `--dtype bf16`; ONNX Runtime, which has no bf16 CPU kernels, runs fp32 (its
column is then the fastest fp32 runtime, for reference).

Internal commands (one fresh process each, started by the main command): `prepare` and
`measure`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("torch", "ort", "bertbench")
RUNTIME_NAMES = {"torch": "PyTorch", "ort": "ONNX Runtime", "bertbench": "bertbench"}
BASE_MODELS = ("bert-base-uncased", "distilbert-base-uncased", "squeezebert/squeezebert-uncased")
TINY_MODELS = ("tiny", "tiny-distilbert", "tiny-squeezebert")
MODEL_CHOICES = BASE_MODELS + TINY_MODELS
DEFAULT_SHAPES = ("1x8", "1x128", "1x384", "8x128", "8x384")
# Training: a base-model step takes seconds on 2 cores, so the base model gets one shape and
# the tiny model bigger batches.
DEFAULT_TRAINING_MODELS = ("tiny", "bert-base-uncased")
DEFAULT_TRAINING_SHAPES = {"tiny": ("8x128", "32x128"), "bert-base-uncased": ("8x128",)}
GOAL_VS_TORCH = 1.25
GOAL_VS_ORT = 1.0
GOAL_TRAINING = 1.0
# bertbench's warm-up policy (src/bench/timer.rs), mirrored by the Python workers.
WARMUP_SETTLE = 0.05
WARMUP_MAX_TIME_S = 10.0
MIN_SAMPLES = 3
TORCH_SEED = 0
INPUT_SEED = 0


class BenchError(Exception):
    """A failure with a message meant for the user (printed without a traceback)."""


# ----------------------------------------------------------------------------------------
# Models and shapes
# ----------------------------------------------------------------------------------------


def model_dir_name(name: str) -> str:
    """Directory name for a model name (`squeezebert/squeezebert-uncased` has a slash)."""
    return name.replace("/", "--")


def family_of(name: str) -> str:
    """The model family of a model name: bert, distilbert or squeezebert."""
    if "distilbert" in name:
        return "distilbert"
    if "squeezebert" in name:
        return "squeezebert"
    return "bert"


def build_config(name: str):
    """The transformers config of a model name: the base models' defaults (transformers'
    config classes default to exactly those), or a 2-layer hidden-64 model for the tiny ones."""
    from transformers import BertConfig, DistilBertConfig, SqueezeBertConfig

    if name == "bert-base-uncased":
        return BertConfig()
    if name == "distilbert-base-uncased":
        return DistilBertConfig()
    if name == "squeezebert/squeezebert-uncased":
        return SqueezeBertConfig()
    if name == "tiny":
        return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=256)
    if name == "tiny-distilbert":
        return DistilBertConfig(dim=64, n_layers=2, n_heads=2, hidden_dim=256)
    if name == "tiny-squeezebert":
        return SqueezeBertConfig(hidden_size=64, embedding_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=256)
    raise BenchError(f"unknown model {name!r}; choose from {', '.join(MODEL_CHOICES)}")


def qa_model_class(family: str):
    """The transformers *ForQuestionAnswering class of a family."""
    from transformers import (BertForQuestionAnswering, DistilBertForQuestionAnswering,
                              SqueezeBertForQuestionAnswering)

    return {"bert": BertForQuestionAnswering, "distilbert": DistilBertForQuestionAnswering,
            "squeezebert": SqueezeBertForQuestionAnswering}[family]


def input_names(family: str) -> list[str]:
    """The model's inputs: DistilBERT has no token types."""
    if family == "distilbert":
        return ["input_ids", "attention_mask"]
    return ["input_ids", "attention_mask", "token_type_ids"]


def parse_shape(text: str) -> tuple[int, int]:
    """`8x128` -> (8, 128): batch size x sequence length."""
    try:
        batch, seq = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad shape {text!r}: expected BATCHxSEQUENCE, e.g. 8x128") from None
    if batch < 1 or seq < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: batch and sequence must be >= 1")
    return batch, seq


def shape_label(shape: tuple[int, int]) -> str:
    """(8, 128) -> `8x128`."""
    return f"{shape[0]}x{shape[1]}"


def random_inputs(config: dict, batch: int, seq: int, seed: int) -> dict:
    """Seeded random inputs as bertbench's bench makes them: random token ids, an all-ones
    attention mask and, for models with token types, segment 0 for the first quarter of the
    sequence and 1 after it. Returns int64 numpy arrays by input name."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = {
        "input_ids": rng.integers(0, config["vocab_size"], size=(batch, seq), dtype=np.int64),
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
    }
    if family_of(config.get("model_type", "")) != "distilbert":
        types = np.ones((batch, seq), dtype=np.int64)
        types[:, :max(seq // 4, 1)] = 0
        inputs["token_type_ids"] = types
    return inputs


def read_config(model_dir: Path) -> dict:
    """The saved config.json of a prepared model."""
    with open(model_dir / "config.json") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------
# Timing (the Python mirror of bertbench's src/bench/timer.rs)
# ----------------------------------------------------------------------------------------


def measure_steps(step, policy: dict) -> dict:
    """Runs `step` under bertbench's timing policy: warm up until two consecutive timings are
    within 5% (at most `warmup_max_runs` runs, 10 s), then time until at least `min_runs` runs
    and `min_time` seconds are in, at most `max_runs` runs, and start no new run after
    `max_time` seconds once 3 runs are in. Returns the warm-up and timed samples in seconds."""
    warmup: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        step()
        warmup.append(time.perf_counter() - t)
        settled = len(warmup) >= 2 and (abs(warmup[-1] - warmup[-2])
                                         <= WARMUP_SETTLE * max(warmup[-1], warmup[-2]))
        if (settled or len(warmup) >= policy["warmup_max_runs"]
                or time.perf_counter() - start >= WARMUP_MAX_TIME_S):
            break
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        n = len(samples)
        enough = n >= policy["min_runs"] and elapsed >= policy["min_time"]
        out_of_budget = n >= policy["max_runs"] or (elapsed >= policy["max_time"]
                                                     and n >= MIN_SAMPLES)
        if enough or out_of_budget:
            break
    return {"warmup": warmup, "samples": samples}


def current_rss_mb() -> float | None:
    """This process's resident set size now (VmRSS), MB = 2^20 bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------
# Worker: measure one (runtime, model, shape) in this process
# ----------------------------------------------------------------------------------------


def torch_int8(model):
    """PyTorch's dynamic quantization of a model's Linear layers (qint8 weights, activations
    quantized per tensor at run time): its three-line recipe for BERT."""
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def measure_torch(args, inputs: dict) -> dict:
    """Loads the saved model with transformers and times inference (inference_mode) or a
    training step (forward with dropout, QA loss, backward, AdamW step); with --precision int8
    the inference of its dynamically quantized form."""
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from transformers import AutoModelForQuestionAnswering

    baseline = current_rss_mb()
    kwargs = {"dtype": torch.float32}
    if args.torch_attn != "default":
        kwargs["attn_implementation"] = args.torch_attn
    model = AutoModelForQuestionAnswering.from_pretrained(args.model_dir, **kwargs)
    batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
    info = {"attn_implementation": model.config._attn_implementation,
            "torch_threads": torch.get_num_threads(), "baseline_rss_mb": baseline,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if args.mode == "inference":
        model.eval()
        if args.precision == "int8":
            model = torch_int8(model)
            info["quantized"] = "torch.ao.quantization.quantize_dynamic, nn.Linear, qint8"

        autocast = args.precision == "bf16"
        if autocast:
            info["autocast"] = "torch.autocast('cpu', dtype=torch.bfloat16)"

        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=autocast):
                model(**batch)
    else:
        model.train()
        torch.manual_seed(TORCH_SEED)
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            lower = name.lower()
            exempt = name.endswith("bias") or "layernorm" in lower or "layer_norm" in lower
            (no_decay if exempt else decay).append(param)
        # bertbench's defaults (TrainingArguments'): lr 2e-5, betas (0.9, 0.999), eps 1e-8,
        # weight decay 0.01 except on biases and LayerNorm weights.
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
            lr=2e-5, betas=(0.9, 0.999), eps=1e-8)
        gen = torch.Generator().manual_seed(INPUT_SEED)
        size = (args.batch_size,)
        starts = torch.randint(0, args.sequence_length, size, generator=gen)
        ends = torch.randint(0, args.sequence_length, size, generator=gen)

        def step():
            optimizer.zero_grad(set_to_none=True)
            out = model(**batch, start_positions=starts, end_positions=ends)
            out.loss.backward()
            optimizer.step()
    info.update(measure_steps(step, timing_policy(args)))
    return info


def measure_ort(args, inputs: dict) -> dict:
    """Times inference of the exported ONNX model in an ONNX Runtime CPU session (no torch in
    this process)."""
    import onnxruntime as ort

    baseline = current_rss_mb()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = int8_onnx_path(args.onnx) if args.precision == "int8" else args.onnx
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}

    def step():
        session.run(None, feed)

    info = {"providers": session.get_providers(), "baseline_rss_mb": baseline,
            "onnxruntime_file": ort.__file__}
    info.update(measure_steps(step, timing_policy(args)))
    return info


def timing_policy(args) -> dict:
    """The timing settings shared by every runtime."""
    return {"warmup_max_runs": args.max_warmup_runs, "min_runs": args.repeat,
            "min_time": args.min_time, "max_runs": args.max_runs, "max_time": args.max_time}


def cmd_measure(args) -> None:
    """Internal: measure one (runtime, model, shape) in this fresh process; prints JSON."""
    config = read_config(Path(args.model_dir))
    inputs = random_inputs(config, args.batch_size, args.sequence_length, INPUT_SEED)
    if args.runtime == "torch":
        out = measure_torch(args, inputs)
    elif args.runtime == "ort":
        out = measure_ort(args, inputs)
    else:
        raise BenchError("bertbench is measured by the main process, not by a worker")
    # The peak up to the end of the timed runs. The process then leaves with os._exit: the
    # interpreter's normal shutdown (torch's teardown) would fault in another ~150 MB of library
    # pages that no user of the model pays for while it runs.
    out["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out), flush=True)
    sys.stderr.flush()
    os._exit(0)


# ----------------------------------------------------------------------------------------
# Worker: prepare one model (save, export, agreement check)
# ----------------------------------------------------------------------------------------


def agreement_batch(config: dict, family: str) -> dict:
    """A fixed batch of 2 x 24 tokens: the second row is padded after 15 tokens, token types
    are 1 from position 6 on (0 on padding). Returns int64 numpy arrays by input name."""
    import numpy as np

    rng = np.random.default_rng(1234)
    batch, seq, real = 2, 24, 15
    ids = rng.integers(1, config["vocab_size"], size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, real:] = 0
    ids[1, real:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if family != "distilbert":
        types = np.zeros((batch, seq), dtype=np.int64)
        types[:, 6:] = 1
        types[1, real:] = 0
        out["token_type_ids"] = types
    return out


def export_onnx(model, family: str, path: Path) -> None:
    """Exports `model` (built with eager attention) with the TorchScript exporter, opset 17,
    dynamic batch and sequence axes. The dummy batch has padding so the mask path is traced."""
    import warnings

    import torch

    names = input_names(family)
    dummy = {k: torch.from_numpy(v[:, :16].copy())
             for k, v in agreement_batch(model.config.to_dict(), family).items()}
    dummy["attention_mask"][1, 10:] = 0
    axes = {name: {0: "batch", 1: "sequence"} for name in names + ["start_logits", "end_logits"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The legacy-exporter deprecation and tracer notes; correctness is checked right after.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(dummy[n] for n in names), str(path), dynamo=False,
                          opset_version=17, input_names=names,
                          output_names=["start_logits", "end_logits"], dynamic_axes=axes)


def max_abs_diff(a, b, mask) -> tuple[float, float]:
    """(max |a-b| over unpadded positions, over all positions) of two [batch, seq] arrays."""
    import numpy as np

    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(diff[mask.astype(bool)].max()), float(diff.max())


def check_agreement(args, model_dir: Path, onnx_path: Path, family: str) -> dict:
    """Start/end logits of PyTorch (with the attention implementation that is timed), ONNX
    Runtime and `bertbench logits` on the fixed padded batch; max abs difference per pair."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForQuestionAnswering

    config = read_config(model_dir)
    batch = agreement_batch(config, family)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    kwargs = {"dtype": torch.float32}
    if args.torch_attn != "default":
        kwargs["attn_implementation"] = args.torch_attn
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, **kwargs).eval()
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    logits = {"torch": (out.start_logits.numpy(), out.end_logits.numpy())}
    attn = model.config._attn_implementation
    del model

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    start, end = session.run(["start_logits", "end_logits"],
                             {i.name: batch[i.name] for i in session.get_inputs()})
    logits["ort"] = (start, end)

    inputs_json = work / "inputs.json"
    with open(inputs_json, "w") as f:
        json.dump({"input_ids": batch["input_ids"].tolist(),
                   "attention_mask": batch["attention_mask"].tolist(),
                   "token_type_ids": batch["token_type_ids"].tolist()
                   if "token_type_ids" in batch else None}, f)
    cmd = [args.bertbench, "logits", "--model", str(model_dir), "--inputs", str(inputs_json),
           "--threads", str(args.threads), "--offline"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr.strip()}")
    (work / "bertbench_logits.json").write_text(proc.stdout)
    try:
        out = json.loads(proc.stdout)
        logits["bertbench"] = (np.array(out["start_logits"]), np.array(out["end_logits"]))
    except (ValueError, KeyError) as e:
        raise BenchError(f"`bertbench logits` printed unexpected output ({e}): "
                         f"{proc.stdout[:200]!r}") from None

    pairs = []
    for a, b in (("torch", "ort"), ("torch", "bertbench"), ("ort", "bertbench")):
        for i, which in enumerate(("start", "end")):
            if logits[a][i].shape != logits[b][i].shape:
                raise BenchError(f"{which}_logits shapes differ: {a} {logits[a][i].shape}, "
                                 f"{b} {logits[b][i].shape}")
        unpadded, everywhere = zip(*(max_abs_diff(logits[a][i], logits[b][i],
                                                  batch["attention_mask"]) for i in (0, 1)))
        pairs.append({"pair": f"{a} vs {b}", "max_abs_diff": max(unpadded),
                      "max_abs_diff_with_padding": max(everywhere),
                      "ok": max(unpadded) <= args.tolerance})
    return {"torch_attn_implementation": attn, "batch": "2x24, row 2 padded after 15 tokens",
            "tolerance": args.tolerance, "pairs": pairs}


def cmd_prepare(args) -> None:
    """Internal: build, random-initialise and save one model; with --onnx, export it and check
    the three runtimes agree. Prints JSON."""
    import torch

    torch.set_num_threads(args.threads)
    config = build_config(args.model)
    family = family_of(args.model)
    model_dir = Path(args.model_dir)
    torch.manual_seed(TORCH_SEED)
    started = time.perf_counter()
    model = qa_model_class(family)(config).eval()
    model.save_pretrained(model_dir)
    report = {"model": args.model, "model_dir": str(model_dir),
              "parameters": sum(p.numel() for p in model.parameters()),
              "build_and_save_s": time.perf_counter() - started}
    if args.onnx:
        started = time.perf_counter()
        # The TorchScript exporter traces the eager attention code.
        del model
        model = qa_model_class(family).from_pretrained(model_dir, attn_implementation="eager",
                                                       dtype=torch.float32).eval()
        export_onnx(model, family, Path(args.onnx))
        del model
        report["export_s"] = time.perf_counter() - started
        report["agreement"] = check_agreement(args, model_dir, Path(args.onnx), family)
        if args.precision == "int8":
            started = time.perf_counter()
            report["int8"] = quantize_onnx(Path(args.onnx), read_config(model_dir))
            report["int8"]["quantize_s"] = time.perf_counter() - started
            report["int8"]["agreement"] = check_int8_agreement(args, model_dir, family)
    print(json.dumps(report))


def int8_onnx_path(onnx_path: Path) -> Path:
    """Where the int8 model of an exported model goes."""
    return onnx_path.with_name("model-int8.onnx")


def quantize_onnx(onnx_path: Path, config: dict) -> dict:
    """ONNX Runtime's int8 recipe for BERT: the transformer optimizer's fused graph (attention,
    LayerNorm, GELU fused; model type bert, which also fits DistilBERT's graph), then dynamic
    quantization, per-channel int8 weights. Returns what was fused and quantized."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    heads = config.get("num_attention_heads", config.get("n_heads"))
    hidden = config.get("hidden_size", config.get("dim"))
    fused_path = onnx_path.with_name("model-fused.onnx")
    optimized = optimize_model(str(onnx_path), model_type="bert", num_heads=heads,
                               hidden_size=hidden)
    optimized.save_model_to_file(str(fused_path))
    ops = {}
    for node in onnx.load(str(fused_path)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    out = int8_onnx_path(onnx_path)
    # The fused graph's com.microsoft operators have no ONNX shape inference: their outputs
    # are float, as the quantizer's own error message suggests saying.
    quantize_dynamic(str(fused_path), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    qops = {}
    for node in onnx.load(str(out)).graph.node:
        qops[node.op_type] = qops.get(node.op_type, 0) + 1
    return {"fused_ops": {k: ops[k] for k in ("Attention", "SkipLayerNormalization",
                                              "EmbedLayerNormalization", "FastGelu", "Gelu",
                                              "BiasGelu", "MatMul", "Conv") if k in ops},
            "quantized_ops": {k: v for k, v in qops.items()
                              if k in ("QAttention", "MatMulInteger", "DynamicQuantizeLinear",
                                       "DynamicQuantizeMatMul", "ConvInteger", "QGemm",
                                       "MatMulIntegerToFloat", "Conv", "MatMul", "Gather")},
            "file_mb": out.stat().st_size / 2**20}


def check_int8_agreement(args, model_dir: Path, family: str) -> dict:
    """Start/end logits of every runtime's int8 model against PyTorch's fp32 logits on the
    agreement batch: max abs difference on unpadded positions and the relative RMS
    (informational: quantization moves logits)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForQuestionAnswering

    config = read_config(model_dir)
    batch = agreement_batch(config, family)
    mask = batch["attention_mask"].astype(bool)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, dtype=torch.float32).eval()
    feed = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.inference_mode():
        ref = model(**feed)
        q = torch_int8(model)(**feed)
    ref = (ref.start_logits.numpy(), ref.end_logits.numpy())
    logits = {"torch-int8": (q.start_logits.numpy(), q.end_logits.numpy())}
    session = ort.InferenceSession(str(int8_onnx_path(Path(args.onnx))),
                                   providers=["CPUExecutionProvider"])
    logits["ort-int8"] = tuple(session.run(["start_logits", "end_logits"],
                                           {i.name: batch[i.name] for i in session.get_inputs()}))
    inputs_json = Path(args.work_dir) / "inputs.json"
    cmd = [args.bertbench, "logits", "--model", str(model_dir), "--inputs", str(inputs_json),
           "--threads", str(args.threads), "--offline", "--dtype", "int8"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    logits["bertbench-int8"] = (np.array(out["start_logits"]), np.array(out["end_logits"]))
    result = {}
    for name, (start, end) in logits.items():
        got = np.concatenate([np.asarray(start)[mask], np.asarray(end)[mask]]).astype(np.float64)
        want = np.concatenate([ref[0][mask], ref[1][mask]]).astype(np.float64)
        result[name] = {"max_abs_diff_vs_torch_fp32": float(np.abs(got - want).max()),
                        "relative_rms_vs_torch_fp32":
                            float(np.sqrt(((got - want) ** 2).sum() / (want ** 2).sum()))}
    return result


# ----------------------------------------------------------------------------------------
# Main process: orchestration
# ----------------------------------------------------------------------------------------


def run_child(cmd: list[str], log_path: Path, env: dict | None = None) -> tuple[int, float, str]:
    """Runs `cmd` with stdout captured and stderr to `log_path`; returns (exit code, peak
    resident set of the child and the descendants it waited for, in MB, stdout). The peak is
    the kernel's high-water mark over the child's whole life, from wait4."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_path.with_suffix(".stdout")
    with open(out_path, "w") as out, open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text()
    out_path.unlink()
    return proc.returncode, usage.ru_maxrss / 1024, stdout


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return ""


def worker_env(threads: int, avx2: bool = False, capped_ort: Path | None = None) -> dict:
    """The environment of every child process: OpenMP/MKL thread counts pinned too; with
    `avx2` (the --isa avx2 cap), bertbench and PyTorch held to AVX2+FMA, and ONNX Runtime
    loaded from `capped_ort` (see `cap_ort`)."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["TQDM_DISABLE"] = "1"
    if avx2:
        env.update(TORCH_AVX2_ENV)
        env["BERTBENCH_ISA"] = "avx2"
    if capped_ort is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(capped_ort), os.environ.get("PYTHONPATH")) if p)
    return env


# PyTorch's own switches that hold it to AVX2: ATen's kernels, oneDNN's and MKL's.
TORCH_AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2",
                  "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cap_ort(dest: Path) -> int:
    """Copies the installed onnxruntime package into `dest` with every XGETBV instruction of
    its libraries replaced by `mov al, 7; nop`: the process then reads the OS's enabled
    register state as x87+SSE+AVX and no AVX-512 (opmask, ZMM) state, so MLAS and ORT's CPU
    feature checks take their AVX2/FMA3 kernels. ONNX Runtime has no switch for this. Only the
    low byte (bits 0-7, which hold the x87/SSE/AVX and all three AVX-512 state bits) is set:
    the bits above it keep whatever the register held, and those are AMX's and later
    extensions' state, which no fp32 kernel depends on (see `patch_xgetbv`). Returns how many
    were patched; refuses zero."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise BenchError("--isa avx2 needs objdump (Debian/Ubuntu: apt install binutils) to "
                         "cap ONNX Runtime's instruction set")
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        raise BenchError("onnxruntime is not installed")
    src = Path(spec.origin).parent
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest / "onnxruntime")
    patched = sum(patch_xgetbv(lib, objdump)
                  for lib in sorted((dest / "onnxruntime" / "capi").glob("*.so*")))
    if patched == 0:
        raise BenchError(f"no XGETBV instruction found in {src}/capi: cannot cap ONNX "
                         "Runtime's instruction set")
    return patched


def patch_xgetbv(lib: Path, objdump: str) -> int:
    """Replaces, in place, every XGETBV instruction (`0f 01 d0`) of the shared library `lib`
    with `mov al, 7; nop` (`b0 07 90`, the same length). The instructions are those objdump's
    disassembly lists, mapped to file offsets through the section headers, so three bytes that
    happen to spell XGETBV inside another instruction are left alone. Returns how many were
    patched (the file is not rewritten when there are none)."""
    headers = subprocess.run([objdump, "-h", str(lib)], capture_output=True, text=True,
                             check=True).stdout
    # Section lines: index, name, size, VMA, LMA, file offset, alignment.
    spans = [(int(m[3], 16), int(m[3], 16) + int(m[2], 16), int(m[5], 16)) for m in
             re.finditer(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)"
                         r"\s+([0-9a-f]+)", headers, re.M)]
    code = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True,
                          check=True).stdout
    sites = [int(m[1], 16) for m in
             re.finditer(r"^\s*([0-9a-f]+):\s+0f 01 d0\s+xgetbv", code, re.M)]
    if not sites:
        return 0
    data = bytearray(lib.read_bytes())
    for addr in sites:
        off = next((o + addr - v for v, end, o in spans if v <= addr < end), None)
        if off is None or data[off:off + 3] != b"\x0f\x01\xd0":
            raise BenchError(f"cannot map XGETBV at {addr:#x} in {lib} to its file bytes")
        data[off:off + 3] = b"\xb0\x07\x90"
    lib.write_bytes(data)
    return len(sites)


def isa_cap_broken(runtime: str, details: dict, capped_ort: Path | None) -> str | None:
    """Under --isa avx2, why a measurement did not run capped (None when it did), from what
    the measuring process reported: bertbench's kernel tier, PyTorch's CPU capability, and the
    file ONNX Runtime was imported from (which must be under `capped_ort`, the patched copy)."""
    if runtime == "bertbench" and details.get("isa") != "avx2":
        return f"bertbench ran its {details.get('isa')} kernels, not avx2"
    if runtime == "torch" and details.get("cpu_capability") != "AVX2":
        return f"PyTorch reports CPU capability {details.get('cpu_capability')}, not AVX2"
    if runtime == "ort":
        loaded = details.get("onnxruntime_file")
        if capped_ort is None or loaded is None or not Path(loaded).is_relative_to(capped_ort):
            return f"ONNX Runtime loaded from {loaded}, not the copy"
    return None


class Runner:
    """Runs the preparation and the measurements of one benchmark in OUT."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.output_dir)
        self.script = str(Path(__file__).resolve())
        self.avx2 = args.isa == "avx2"
        self.capped_ort = None
        if self.avx2 and not args.training:
            self.capped_ort = args.output_dir / "ort-avx2"
            # In a child: the disassembly is ~1 GB of text, and a child's peak RSS starts from
            # its parent's (Linux keeps the high-water mark across fork and exec), so the
            # measured processes would inherit it.
            log = self.out / "logs" / "cap-ort.log"
            code, _, stdout = run_child([sys.executable, self.script, "cap-ort", "--dest",
                                         str(self.capped_ort)], log, worker_env(args.threads))
            if code != 0:
                raise BenchError(f"capping ONNX Runtime at AVX2 failed (exit {code}); log "
                                 f"{log}:\n{tail(log)}")
            args.ort_xgetbv_patched = json.loads(stdout.strip().splitlines()[-1])["patched"]
            print(f"ONNX Runtime capped at AVX2: {args.ort_xgetbv_patched} XGETBV instructions "
                  f"patched in a copy under {self.capped_ort}", flush=True)
        self.env = worker_env(args.threads, self.avx2, self.capped_ort)
        self.mode = "training" if args.training else "inference"
        self.runtimes = ("torch", "bertbench") if args.training else RUNTIMES
        self.rows: list[dict] = []
        self.prepared: dict[str, dict] = {}

    def paths(self, model: str) -> tuple[Path, Path]:
        """(saved model directory, ONNX file) of a model."""
        name = model_dir_name(model)
        return self.out / "models" / name, self.out / "onnx" / name / "model.onnx"

    def prepare(self, model: str) -> dict:
        """Builds, saves and (inference) exports and checks one model in a fresh process."""
        model_dir, onnx_path = self.paths(model)
        cmd = [sys.executable, self.script, "prepare", "--model", model, "--model-dir",
               str(model_dir), "--threads", str(self.args.threads), "--bertbench",
               self.args.bertbench, "--tolerance", str(self.args.tolerance), "--torch-attn",
               self.args.torch_attn, "--work-dir",
               str(self.out / "agreement" / model_dir_name(model)), "--precision",
               self.args.precision]
        if not self.args.training:
            cmd += ["--onnx", str(onnx_path)]
        log = self.out / "logs" / f"prepare-{model_dir_name(model)}.log"
        what = "saving" if self.args.training else "saving, exporting to ONNX and checking"
        print(f"[{model}] building with seed {TORCH_SEED}, {what}...", flush=True)
        code, _, stdout = run_child(cmd, log, self.env)
        if code != 0:
            raise BenchError(f"preparing {model} failed (exit {code}); log {log}:\n{tail(log)}")
        report = json.loads(stdout.strip().splitlines()[-1])
        for pair in report.get("agreement", {}).get("pairs", []):
            print(f"[{model}] {pair['pair']:<18} max |diff| {pair['max_abs_diff']:.2e} "
                  f"(with padded positions {pair['max_abs_diff_with_padding']:.2e})"
                  f"{'' if pair['ok'] else '  <-- above tolerance'}", flush=True)
        self.prepared[model] = report
        return report

    def measure(self, model: str, shape: tuple[int, int], runtime: str, round_: int) -> dict:
        """Measures one (model, shape, runtime) in a fresh process; returns a result row."""
        model_dir, onnx_path = self.paths(model)
        a = self.args
        label = f"{self.mode}-{model_dir_name(model)}-{shape_label(shape)}-{runtime}-r{round_}"
        log = self.out / "logs" / f"{label}.log"
        row = {"model": model, "mode": self.mode, "batch_size": shape[0],
               "sequence_length": shape[1], "shape": shape_label(shape), "runtime": runtime,
               "round": round_, "status": "ok", "reason": ""}
        policy = ["--repeat", str(a.repeat), "--min-time", str(a.min_time), "--max-time",
                  str(a.max_time), "--max-runs", str(a.max_runs), "--max-warmup-runs",
                  str(a.max_warmup_runs)]
        if runtime == "bertbench":
            bench_dir = self.out / "bertbench" / label
            cmd = [a.bertbench, "bench", "--models", str(model_dir), "--batch-sizes",
                   str(shape[0]), "--sequence-lengths", str(shape[1]), "--threads",
                   str(a.threads), "--no-memory", "--no-peak", "--in-process", "--offline",
                   "--output-dir", str(bench_dir)] + policy
            cmd += ["--training", "--no-inference"] if self.args.training else ["--load-weights"]
            cmd += ["--dtype", {"int8": "int8", "bf16": "bf16"}[a.precision]] \
                if a.precision != "fp32" else []
        else:
            cmd = [sys.executable, self.script, "measure", "--runtime", runtime, "--mode",
                   self.mode, "--model-dir", str(model_dir), "--onnx", str(onnx_path),
                   "--batch-size", str(shape[0]), "--sequence-length", str(shape[1]),
                   "--threads", str(a.threads), "--torch-attn", a.torch_attn, "--precision",
                   a.precision] + policy
        row["load_1m"] = load_average()
        started = time.perf_counter()
        code, peak_mb, stdout = run_child(cmd, log, self.env)
        row["wall_s"] = round(time.perf_counter() - started, 3)
        row["peak_rss_mb"] = round(peak_mb, 1)
        try:
            if code != 0:
                raise BenchError(f"exit {code}: {tail(log, 3)}")
            if runtime == "bertbench":
                result = read_bertbench_result(bench_dir)
            else:
                result = json.loads(stdout.strip().splitlines()[-1])
        except (BenchError, ValueError, IndexError, KeyError, OSError) as e:
            row.update(status="failed", reason=f"{e} (log {log})", samples=[], warmup=[])
            return row
        row["samples"] = result["samples"]
        row["warmup"] = result["warmup"]
        row["median_s"] = statistics.median(result["samples"])
        row["baseline_rss_mb"] = result.get("baseline_rss_mb")
        if "self_peak_rss_mb" in result:
            # The worker's own high-water mark at the end of its timed runs (wait4's also
            # counts the `ldconfig -p` that importing torch starts, a copy of the worker).
            row["peak_rss_mb"] = round(result["self_peak_rss_mb"], 1)
        row["details"] = {k: v for k, v in result.items()
                          if k not in ("samples", "warmup", "baseline_rss_mb")}
        wrong = isa_cap_broken(runtime, row["details"], self.capped_ort) if self.avx2 else None
        if wrong:
            row.update(status="failed", reason=f"{wrong} (log {log})")
        return row

    def run(self, models: list[str], shapes_of) -> None:
        """Prepares every model, then the rounds: shape by shape, every runtime, the runtime
        order rotated by one each round. Results are written after every measurement."""
        for model in models:
            self.prepare(model)
        failed = [f"{m}: {p['pair']} differs by {p['max_abs_diff']:.2e}"
                  for m, r in self.prepared.items()
                  for p in r.get("agreement", {}).get("pairs", []) if not p["ok"]]
        if failed:
            self.write_outputs()
            raise BenchError("the runtimes disagree beyond --tolerance "
                             f"{self.args.tolerance:g} on unpadded positions:\n  "
                             + "\n  ".join(failed) + "\nnothing was timed")
        total = sum(len(shapes_of(m)) for m in models) * len(self.runtimes) * self.args.rounds
        done = 0
        for round_ in range(1, self.args.rounds + 1):
            k = (round_ - 1) % len(self.runtimes)
            order = self.runtimes[k:] + self.runtimes[:k]
            for model in models:
                for shape in shapes_of(model):
                    for runtime in order:
                        done += 1
                        print(f"[{done}/{total}] round {round_} {model} {shape_label(shape)} "
                              f"{RUNTIME_NAMES[runtime]}...", end=" ", flush=True)
                        row = self.measure(model, shape, runtime, round_)
                        self.rows.append(row)
                        if row["status"] == "ok":
                            print(f"median {fmt_ms(row['median_s'])} ms over "
                                  f"{len(row['samples'])} runs, peak {row['peak_rss_mb']:.0f} MB",
                                  flush=True)
                        else:
                            print(f"FAILED: {row['reason']}", flush=True)
                        self.write_outputs()

    def write_outputs(self) -> None:
        """results.csv, results.json and summary.md from what is measured so far."""
        write_results_csv(self.out / "results.csv", self.rows)
        env = self.environment()
        summary = render_summary(self.args, env, self.prepared, self.rows, self.mode,
                                 self.runtimes)
        (self.out / "summary.md").write_text(summary)
        with open(self.out / "results.json", "w") as f:
            json.dump({"settings": settings_of(self.args), "environment": env,
                       "prepared": self.prepared, "measurements": self.rows}, f, indent=1,
                      default=str)

    def environment(self) -> dict:
        """Machine and versions (computed once)."""
        if not hasattr(self, "_env"):
            self._env = environment(self.args)
        return self._env


def read_bertbench_result(bench_dir: Path) -> dict:
    """Warm-up and timed samples of the single cell in a `bertbench bench` output directory."""
    with open(bench_dir / "results.json") as f:
        data = json.load(f)
    (m,) = data["measurements"]
    if m["status"] != "ok" or not m.get("speed"):
        raise BenchError(f"bertbench cell {m['status']}: {m.get('reason')}")
    timings = m["speed"]["timings"]
    env = dict(data.get("environment", []))
    return {"samples": timings["samples"], "warmup": timings["warmup"],
            "bertbench_reason": m.get("reason"), "git_commit": env.get("git_commit"),
            "isa": env.get("isa"), "int8_kernel": env.get("int8_kernel")}


def load_average() -> float | None:
    """The 1-minute load average just before a measurement (other work on the machine shows
    there; PyTorch's OpenMP threads in particular stall when the cores are shared)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with 3 significant-ish digits."""
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def write_results_csv(path: Path, rows: list[dict]) -> None:
    """One tidy row per measurement: its median, peak RSS and raw timed samples."""
    fields = ["model", "mode", "shape", "batch_size", "sequence_length", "runtime", "round",
              "status", "median_s", "runs", "warmup_runs", "peak_rss_mb", "baseline_rss_mb",
              "load_1m", "wall_s", "reason", "samples_s"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "runs": len(r.get("samples", [])),
                        "warmup_runs": len(r.get("warmup", [])),
                        "samples_s": " ".join(f"{s:.9g}" for s in r.get("samples", []))})


def cpuinfo() -> dict[str, str]:
    """The first processor's `key: value` fields of /proc/cpuinfo (empty where there is
    none): the one reader of it here."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU model name."""
    return cpuinfo().get("model name") or platform.processor() or "unknown"


def cpu_flags(fields: dict[str, str] | None = None) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo has none), from `fields` when the
    caller has read them already."""
    return set((cpuinfo() if fields is None else fields).get("flags", "").split())


def cpu_identity() -> str:
    """What names the CPU beyond its (often generic, in VMs) model name: family and model
    numbers, the widest vector extension, and the cache sizes of CPU 0 from sysfs."""
    fields = cpuinfo()
    parts = []
    if "cpu family" in fields and "model" in fields:
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = cpu_flags(fields)
    parts.append("AVX-512" if "avx512f" in flags else "AVX2+FMA" if {"avx2", "fma"} <= flags
                 else "no AVX2")
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size.replace('K', ' KiB')}")
    if caches:
        parts.append(", ".join(caches) + " (CPU 0)")
    return "; ".join(parts)


def package_version(name: str) -> str:
    """An installed package's version, without importing it."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(args) -> dict:
    """Machine, date and versions for the summary."""
    try:
        version = subprocess.run([args.bertbench, "--version"], capture_output=True,
                                 text=True).stdout.strip()
    except OSError:
        version = "unknown"
    try:
        script_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12",
                                        "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        script_commit = ""
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cpu_identity": cpu_identity(), "logical_cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "threads": args.threads, "os": platform.platform(),
        "python": platform.python_version(), "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "onnxruntime": package_version("onnxruntime"), "onnx": package_version("onnx"),
        "numpy": package_version("numpy"), "bertbench": version, "bertbench_binary":
        getattr(args, "bertbench_source", args.bertbench), "script_commit": script_commit,
    }


def settings_of(args) -> dict:
    """The run's settings, for results.json."""
    return {k: v for k, v in vars(args).items() if k not in ("func",)}


# ----------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------


def spread(values: list[float], fmt) -> str:
    """`median [min-max]` of values, or just the value when there is one."""
    mid = statistics.median(values)
    if len(values) == 1:
        return fmt(mid)
    return f"{fmt(mid)} [{fmt(min(values))}–{fmt(max(values))}]"


def goal_text(ratios: list[float], goal: float) -> str:
    """yes (every round meets the goal), median only, or no."""
    if min(ratios) >= goal:
        return "yes"
    if statistics.median(ratios) >= goal:
        return "median only"
    return "no"


def summarize(rows: list[dict], runtimes: tuple[str, ...]) -> list[dict]:
    """Per (model, shape): per-runtime round medians and peaks, per-round ratios to bertbench."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        g = groups.setdefault((r["model"], r["shape"]), {"model": r["model"],
                                                         "shape": r["shape"], "by": {}})
        g["by"].setdefault(r["runtime"], []).append(r)
    out = []
    for g in groups.values():
        cell = {"model": g["model"], "shape": g["shape"], "time": {}, "rss": {}, "ratio": {},
                "failed": []}
        per_round = {}
        for runtime in runtimes:
            ok = [r for r in g["by"].get(runtime, []) if r["status"] == "ok"]
            if len(ok) < len(g["by"].get(runtime, [])):
                cell["failed"].append(runtime)
            if ok:
                cell["time"][runtime] = [r["median_s"] for r in ok]
                cell["rss"][runtime] = max(r["peak_rss_mb"] for r in ok)
                per_round[runtime] = {r["round"]: r["median_s"] for r in ok}
        base = per_round.get("bertbench", {})
        for runtime in runtimes:
            if runtime == "bertbench" or runtime not in per_round:
                continue
            ratios = [per_round[runtime][k] / base[k] for k in per_round[runtime] if k in base]
            if ratios:
                cell["ratio"][runtime] = ratios
        out.append(cell)
    return out


def isa_text(args, rows: list[dict], runtimes: tuple[str, ...]) -> str:
    """Which kernels each runtime ran, as its measurements reported them."""
    def seen(runtime: str, key: str) -> str:
        values = sorted({str(r["details"].get(key)) for r in rows
                         if r["runtime"] == runtime and r["status"] == "ok"})
        return "/".join(values) or "not measured"
    bertbench = f"bertbench `{seen('bertbench', 'isa')}` kernels"
    if getattr(args, "precision", "fp32") == "int8":
        bertbench += f" (int8 kernel `{seen('bertbench', 'int8_kernel')}`)"
    parts = [bertbench,
             f"PyTorch CPU capability {seen('torch', 'cpu_capability')}"]
    if "ort" in runtimes:
        if getattr(args, "ort_xgetbv_patched", None):
            parts.append("ONNX Runtime from a copy of its libraries whose "
                         f"{args.ort_xgetbv_patched} XGETBV instructions report no AVX-512 "
                         "register state (it has no switch; MLAS then runs its FMA3 kernels)")
        else:
            parts.append("ONNX Runtime's own choice (MLAS's best kernels for this CPU)")
    if args.isa == "avx2":
        return ("capped at AVX2+FMA for every runtime (`--isa avx2`; PyTorch through "
                + ", ".join(f"{k}={v}" for k, v in TORCH_AVX2_ENV.items()) + "): "
                + "; ".join(parts))
    return "; ".join(parts)


def render_summary(args, env: dict, prepared: dict, rows: list[dict], mode: str,
                   runtimes: tuple[str, ...]) -> str:
    """summary.md: the machine, versions and method, then one Markdown table."""
    cells = summarize(rows, runtimes)
    training = mode == "training"
    precision = getattr(args, "precision", "fp32")
    lines = [f"# bertbench vs {'PyTorch' if training else 'PyTorch and ONNX Runtime'}: "
             f"{mode}, {precision}, CPU", ""]
    lines.append(f"- Machine: {env['cpu']} ({env.get('cpu_identity', '')}), "
                 f"{env['logical_cpus']} logical CPUs, "
                 f"{env['memory_gib']} GiB; {env['threads']} threads for every runtime")
    lines.append(f"- Date: {env['date_utc']}")
    # The commit each bertbench measurement reported (more than one if the binary was rebuilt
    # during the run, which makes the run worthless).
    commits = list(dict.fromkeys(r["details"].get("git_commit") or "unknown" for r in rows
                                 if r["runtime"] == "bertbench" and r["status"] == "ok"))
    commit = " then ".join(commits) + (" (the binary changed during the run!)"
                                        if len(commits) > 1 else "")
    lines.append(f"- Versions: {env['bertbench']} (commit {commit or 'unknown'}), "
                 f"torch {env['torch']}, transformers {env['transformers']}"
                 + ("" if training else f", onnxruntime {env['onnxruntime']}")
                 + f", Python {env['python']}")
    attn = {m: p.get("agreement", {}).get("torch_attn_implementation") for m, p in
            prepared.items()}
    attn_text = ", ".join(f"{m}: {a}" for m, a in attn.items() if a)
    if training:
        lines.append("- Step: forward with dropout, QA loss on random start/end positions, "
                     "backward, AdamW (lr 2e-5, weight decay 0.01 except biases and LayerNorm); "
                     "PyTorch's `torch.optim.AdamW` defaults, bertbench's fused AdamW")
    else:
        lines.append("- PyTorch: transformers' `*ForQuestionAnswering`, eager mode, "
                     "`torch.inference_mode()`, attention "
                     f"`{args.torch_attn}`{f' ({attn_text})' if attn_text else ''}; "
                     "ONNX Runtime: TorchScript export (opset 17), CPU EP, ORT_ENABLE_ALL, "
                     "inter-op threads 1; bertbench: `bench --load-weights` of the same weights")
        if precision == "bf16":
            lines.append("- bf16: PyTorch under `torch.autocast('cpu', dtype=torch.bfloat16)`, "
                         "bertbench `bench --dtype bf16` (bf16 weights and activations in the "
                         "encoder's products, f32 sums, the rest f32); ONNX Runtime has no bf16 "
                         "CPU kernels and runs fp32 here")
        if precision == "int8":
            lines.append("- int8: ONNX Runtime runs the transformer optimizer's fused graph "
                         "(model type bert) after `quantize_dynamic` (per-channel QInt8 "
                         "weights, uint8 activations per tensor); PyTorch its model after "
                         "`torch.ao.quantization.quantize_dynamic` ({nn.Linear}, qint8); "
                         "bertbench `bench --dtype int8` (int8 weights per output channel, "
                         "uint8 activations per row)")
    lines.append(f"- Instruction set: {isa_text(args, rows, runtimes)}")
    lines.append(f"- Timing (every runtime): warm-up until two runs agree within 5% (at most "
                 f"{args.max_warmup_runs} runs, 10 s), then at least {args.repeat} runs and "
                 f"{args.min_time:g} s (at most {args.max_runs} runs, {args.max_time:g} s); "
                 f"each measurement in a fresh process; {args.rounds} round(s), runtime order "
                 "rotated each round. Times: median over rounds of each round's median "
                 "[min–max over rounds]; ratios likewise from the per-round ratios.")
    lines.append("- Peak RSS: the measuring process's resident-set high-water mark over its "
                 "whole life (model load included; for PyTorch and ONNX Runtime also the "
                 "Python interpreter and the library), max over rounds, MB = 2^20 bytes")
    loads = [r["load_1m"] for r in rows if r.get("load_1m") is not None]
    if loads:
        lines.append(f"- 1-minute load average before each measurement: {min(loads):.2f}–"
                     f"{max(loads):.2f} (near 0 on an idle machine; above ~0.5 something else "
                     "was running and the numbers are suspect)")
    bases = {}
    for r in rows:
        if r["status"] == "ok" and r.get("baseline_rss_mb") is not None:
            bases.setdefault(r["runtime"], []).append(r["baseline_rss_mb"])
    if bases:
        lines.append("- Of the peak, the process held this much after importing its libraries "
                     "and before loading the model: " + ", ".join(
                         f"{RUNTIME_NAMES[rt]} {statistics.median(v):.0f} MB"
                         for rt, v in bases.items()))
    lines.append("")
    if training:
        header = ["model", "batch x seq", "bertbench ms", "PyTorch ms",
                  f"PyTorch / bertbench (goal ≥ {GOAL_TRAINING:g})", "peak RSS MB bertbench",
                  "peak RSS MB PyTorch", "goals met"]
    else:
        header = ["model", "batch x seq", "bertbench ms", "PyTorch ms", "ORT ms",
                  f"PyTorch / bertbench (goal ≥ {GOAL_VS_TORCH:g})",
                  f"ORT / bertbench (goal ≥ {GOAL_VS_ORT:g})", "peak RSS MB bertbench",
                  "peak RSS MB PyTorch", "peak RSS MB ORT", "goals met"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 3) + ["---"])
                 + "|")
    met_all = 0
    for c in cells:
        times = [spread(c["time"][rt], fmt_ms) if rt in c["time"] else "failed"
                 for rt in runtimes]
        goals = {"torch": GOAL_TRAINING if training else GOAL_VS_TORCH, "ort": GOAL_VS_ORT}
        ratio_cells, verdicts = [], []
        for rt in runtimes:
            if rt == "bertbench":
                continue
            if rt in c["ratio"]:
                ratio_cells.append(spread(c["ratio"][rt], lambda x: f"{x:.2f}"))
                verdicts.append(f"{'PyTorch' if rt == 'torch' else 'ORT'} "
                                f"{goal_text(c['ratio'][rt], goals[rt])}")
            else:
                ratio_cells.append("–")
                verdicts.append(f"{'PyTorch' if rt == 'torch' else 'ORT'} n/a")
        rss = [f"{c['rss'][rt]:.0f}" if rt in c["rss"] else "–" for rt in runtimes]
        others = [c["rss"][rt] for rt in runtimes if rt != "bertbench" and rt in c["rss"]]
        if "bertbench" in c["rss"] and others:
            lowest = all(c["rss"]["bertbench"] < o for o in others)
            verdicts.append(f"RSS {'yes' if lowest else 'no'}")
        if all(v.endswith(" yes") for v in verdicts) and not c["failed"]:
            met_all += 1
        # order: bertbench, torch, ort
        order = ["bertbench"] + [rt for rt in runtimes if rt != "bertbench"]
        idx = {rt: i for i, rt in enumerate(runtimes)}
        row = [c["model"], c["shape"]] + [times[idx[rt]] for rt in order] + ratio_cells \
            + [rss[idx[rt]] for rt in order] + ["; ".join(verdicts)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Every goal met in every round: {met_all} of {len(cells)} cells. "
                 "A ratio above 1 means bertbench is faster.")
    agreement = [(m, p) for m, r in prepared.items()
                 for p in r.get("agreement", {}).get("pairs", [])]
    if agreement:
        lines.append("")
        lines.append("Logits agreement (fixed 2x24 batch, padded row, unpadded positions): "
                     + "; ".join(f"{m} {p['pair']} {p['max_abs_diff']:.1e}"
                                 + ("" if p["ok"] else " (above the tolerance)")
                                 for m, p in agreement) + ".")
    int8 = [(m, r["int8"]) for m, r in prepared.items() if "int8" in r]
    if int8:
        lines.append("")
        lines.append("int8 models' logits against PyTorch fp32 (same batch, unpadded positions; "
                     "relative RMS): " + "; ".join(
                         f"{m} " + ", ".join(f"{k} {v['relative_rms_vs_torch_fp32']:.3f}"
                                             for k, v in q["agreement"].items())
                         for m, q in int8) + ".")
        lines.append("")
        lines.append("ONNX Runtime's int8 graphs: " + "; ".join(
            f"{m}: fused {q['fused_ops']}, quantized {q['quantized_ops']}, "
            f"{q['file_mb']:.0f} MB" for m, q in int8) + ".")
    failures = [r for r in rows if r["status"] != "ok"]
    if failures:
        lines.append("")
        lines.append("Failed measurements: " + "; ".join(
            f"{r['model']} {r['shape']} {r['runtime']} round {r['round']}: {r['reason']}"
            for r in failures))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def add_timing_args(p: argparse.ArgumentParser) -> None:
    """The timing policy flags, named as bertbench bench's and passed to it unchanged."""
    p.add_argument("--repeat", type=int, default=10, metavar="N",
                   help="minimum timed runs per measurement (default 10)")
    p.add_argument("--min-time", type=float, default=2.0, metavar="S",
                   help="minimum timing time per measurement, seconds (default 2)")
    p.add_argument("--max-time", type=float, default=60.0, metavar="S",
                   help="start no timed run after this many seconds once 3 are in (default 60)")
    p.add_argument("--max-runs", type=int, default=1000, metavar="N",
                   help="maximum timed runs per measurement (default 1000)")
    p.add_argument("--max-warmup-runs", type=int, default=10, metavar="N",
                   help="maximum warm-up runs (warm-up ends once two runs agree within 5%%; "
                        "default 10)")


def main_parser() -> argparse.ArgumentParser:
    """The user-facing command line."""
    p = argparse.ArgumentParser(
        prog="bench_vs_python.py",
        description="Side-by-side fp32 CPU benchmark of bertbench against PyTorch + "
                    "transformers (eager) and ONNX Runtime (CPU EP), or with --training a "
                    "training step against PyTorch. Models are random-initialised from "
                    "transformers' configs (no network), saved once, and loaded by every "
                    "runtime. Usually started through scripts/bench-vs-python.sh.",
        epilog="Quick check: --models tiny --shapes 1x8 2x16 --rounds 1 --min-time 0.2. "
               "Goals: bertbench at least as fast as ONNX Runtime and 1.25x PyTorch, with "
               "the lowest peak RSS; training at least as fast as PyTorch.")
    p.add_argument("--models", nargs="+", choices=MODEL_CHOICES, metavar="MODEL",
                   help="models: " + ", ".join(MODEL_CHOICES) + " (tiny*: 2 layers, hidden 64, "
                        "for quick checks). Default: the three base models; with --training "
                        "tiny and bert-base-uncased")
    p.add_argument("--shapes", nargs="+", type=parse_shape, metavar="BxS",
                   help="batch x sequence shapes (default " + " ".join(DEFAULT_SHAPES)
                        + "; with --training 8x128 32x128 for tiny, 8x128 for the base model)")
    p.add_argument("--threads", type=int, default=2,
                   help="compute threads of every runtime (default 2)")
    p.add_argument("--rounds", type=int, default=2,
                   help="full passes over models x shapes x runtimes, runtime order rotated "
                        "each round (default 2)")
    p.add_argument("--training", action="store_true",
                   help="time a training step (forward, QA loss, backward, AdamW) against "
                        "PyTorch instead of inference")
    add_timing_args(p)
    p.add_argument("--isa", choices=("avx2",),
                   help="hold every runtime to AVX2+FMA on a CPU with AVX-512, to measure the "
                        "tier AVX2-only CPUs get: bertbench --isa avx2; PyTorch through "
                        + ", ".join(f"{k}={v}" for k, v in TORCH_AVX2_ENV.items())
                        + "; ONNX Runtime, which has no switch, from a copy whose XGETBV "
                        "instructions report no AVX-512 register state (needs objdump). "
                        "Default: each runtime's best for the CPU")
    p.add_argument("--precision", choices=("fp32", "int8", "bf16"), default="fp32",
                   help="fp32 (default); int8: every runtime's int8 model (ONNX Runtime: the "
                        "transformer optimizer's fused graph through quantize_dynamic, "
                        "per-channel; PyTorch: quantize_dynamic of its Linear layers; "
                        "bertbench: --dtype int8); bf16: PyTorch under CPU autocast to bf16, "
                        "bertbench --dtype bf16, ONNX Runtime fp32 (it has no bf16 CPU kernels)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed max abs difference of logits between runtimes "
                        "(default 1e-4)")
    p.add_argument("--torch-attn", choices=("default", "eager", "sdpa"), default="default",
                   help="PyTorch attention implementation to time: transformers' default "
                        "(sdpa where the model supports it; SqueezeBERT has only eager), "
                        "eager or sdpa (default: default)")
    p.add_argument("--output-dir", type=Path,
                   help="output directory (default bench-results/vs-python-<date-time>/ in "
                        "the repository)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty output directory (replacing this "
                        "script's files in it)")
    p.add_argument("--keep-models", action="store_true",
                   help="keep the saved weights and ONNX files (hundreds of MB per base model); "
                        "by default they are deleted at the end, configs are kept")
    p.add_argument("--bertbench", default=os.environ.get("BERTBENCH"),
                   help="bertbench binary (default $BERTBENCH, else target/release/bertbench)")
    return p


def worker_parser() -> argparse.ArgumentParser:
    """The internal commands' command lines (started by the main command)."""
    p = argparse.ArgumentParser(prog="bench_vs_python.py", description="internal commands")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure one runtime, model and shape; prints JSON")
    m.add_argument("--runtime", choices=("torch", "ort"), required=True)
    m.add_argument("--mode", choices=("inference", "training"), required=True)
    m.add_argument("--model-dir", required=True)
    m.add_argument("--onnx", type=Path)
    m.add_argument("--batch-size", type=int, required=True)
    m.add_argument("--sequence-length", type=int, required=True)
    m.add_argument("--threads", type=int, required=True)
    m.add_argument("--torch-attn", default="default")
    m.add_argument("--precision", choices=("fp32", "int8", "bf16"), default="fp32")
    add_timing_args(m)
    m.set_defaults(func=cmd_measure)
    q = sub.add_parser("prepare", help="build, save, export and check one model; prints JSON")
    q.add_argument("--model", required=True)
    q.add_argument("--model-dir", required=True)
    q.add_argument("--onnx")
    q.add_argument("--threads", type=int, required=True)
    q.add_argument("--bertbench", required=True)
    q.add_argument("--tolerance", type=float, required=True)
    q.add_argument("--torch-attn", default="default")
    q.add_argument("--work-dir", required=True)
    q.add_argument("--precision", choices=("fp32", "int8", "bf16"), default="fp32")
    q.set_defaults(func=cmd_prepare)
    c = sub.add_parser("cap-ort", help="copy onnxruntime capped at AVX2; prints JSON")
    c.add_argument("--dest", type=Path, required=True)
    c.set_defaults(func=lambda a: print(json.dumps({"patched": cap_ort(a.dest)})))
    return p


OWN_OUTPUTS = ("bin", "models", "onnx", "agreement", "bertbench", "logs", "ort-avx2",
               "results.csv", "results.json", "summary.md")


def prepare_output_dir(args) -> None:
    """Creates the output directory; refuses a non-empty one unless --force, which removes
    only what this script writes there."""
    out = args.output_dir
    if out.exists() and not out.is_dir():
        raise BenchError(f"--output-dir {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            raise BenchError(f"--output-dir {out} is not empty; choose another or pass --force")
        for name in OWN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def check_args(args) -> None:
    """Validates the main command line and fills in defaults."""
    for name in ("threads", "rounds", "repeat", "max_runs", "max_warmup_runs"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.isa == "avx2" and not {"avx2", "fma"} <= cpu_flags():
        raise BenchError("--isa avx2: /proc/cpuinfo lists no AVX2 and FMA on this CPU")
    if args.min_time < 0 or args.max_time < 0:
        raise BenchError("--min-time and --max-time must not be negative")
    if not args.models:
        args.models = list(DEFAULT_TRAINING_MODELS if args.training else BASE_MODELS)
    args.models = list(dict.fromkeys(args.models))
    if args.bertbench is None:
        args.bertbench = str(ROOT / "target" / "release" / "bertbench")
    if not (os.path.isfile(args.bertbench) and os.access(args.bertbench, os.X_OK)):
        raise BenchError(f"bertbench binary {args.bertbench} not found or not executable; "
                         "build it (cargo build --release) or set BERTBENCH / --bertbench")
    args.bertbench = str(Path(args.bertbench).resolve())
    if args.output_dir is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.output_dir = ROOT / "bench-results" / f"vs-python-{stamp}"
    args.output_dir = args.output_dir.resolve()
    missing = [m for m in ("torch", "transformers", "onnxruntime", "onnx", "numpy",
                           "safetensors") if package_version(m) == "not installed"]
    if args.training and "onnxruntime" in missing:
        missing.remove("onnxruntime")
    if missing:
        raise BenchError(f"missing Python packages: {', '.join(missing)}; run through "
                         "scripts/bench-vs-python.sh, which sets up the virtualenv")


def shapes_for(args):
    """A function model -> shapes to measure: --shapes, or the mode's defaults."""
    def shapes_of(model: str) -> list[tuple[int, int]]:
        if args.shapes:
            shapes = list(dict.fromkeys(args.shapes))
        elif args.training:
            shapes = [parse_shape(s) for s in DEFAULT_TRAINING_SHAPES.get(model, ("8x128",))]
        else:
            shapes = [parse_shape(s) for s in DEFAULT_SHAPES]
        return shapes
    return shapes_of


def check_shapes(models: list[str], shapes_of) -> None:
    """Refuses sequences longer than a model's position table before any work."""
    for model in models:
        limit = 512  # max_position_embeddings of every built-in config
        long = [shape_label(s) for s in shapes_of(model) if s[1] > limit]
        if long:
            raise BenchError(f"{model} takes at most {limit} tokens; shapes {', '.join(long)} "
                             "are too long")


def delete_weights(out: Path) -> None:
    """Removes the saved weights, ONNX files and the binary's and ONNX Runtime's copies
    (configs stay)."""
    for pattern in ("models/*/*.safetensors", "onnx/*/*", "bin/bertbench"):
        for path in out.glob(pattern):
            path.unlink()
    shutil.rmtree(out / "ort-avx2", ignore_errors=True)


def main_command(argv: list[str]) -> int:
    """The user-facing benchmark."""
    args = main_parser().parse_args(argv)
    check_args(args)
    shapes_of = shapes_for(args)
    check_shapes(args.models, shapes_of)
    prepare_output_dir(args)
    # Run a private copy, so that a rebuild of the binary during the run cannot mix versions.
    original = args.bertbench
    copy = args.output_dir / "bin" / "bertbench"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy2(original, copy)
    args.bertbench = str(copy)
    args.bertbench_source = original
    print(f"output: {args.output_dir}\nbertbench: {original} (copied to {copy})", flush=True)
    runner = Runner(args)
    try:
        runner.run(args.models, shapes_of)
    finally:
        if runner.rows:
            runner.write_outputs()
    if not args.keep_models:
        delete_weights(args.output_dir)
    print()
    print((args.output_dir / "summary.md").read_text())
    print(f"results in {args.output_dir}")
    failed = [r for r in runner.rows if r["status"] != "ok"]
    if failed:
        print(f"error: {len(failed)} measurement(s) failed; see summary.md and the logs",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Dispatches to the main command or to an internal one."""
    try:
        if argv[:1] and argv[0] in ("measure", "prepare", "cap-ort"):
            args = worker_parser().parse_args(argv)
            args.func(args)
            return 0
        return main_command(argv)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; results so far are in the output directory", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
