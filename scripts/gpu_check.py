#!/usr/bin/env python3
"""The GPU check's "there" half (docs/gpu.md): one command, run from the folder that
`scripts/gpu-check.sh prepare` gathered, on a machine with an NVIDIA GPU, PyTorch and
transformers, and no network. Every step is time-boxed, so one failure cannot eat the budget,
and every result goes into the output folder it is given:

  steps.json   each step: status (ok, failed, timeout, skipped), seconds, what it found
  summary.md   the tables a person reads
  <step>/      bertbench's own outputs (results.csv/json, env.csv, eval_results.json, ...)

Steps:
  libraries  nvidia-smi; the CUDA libraries: the driver's libcuda, and the nvidia-* wheels in
             this Python environment put on LD_LIBRARY_PATH for bertbench (which loads them
             at run time); `ldd` of the binary
  parity     `bertbench logits` on the tiny fixtures in f32, f16 and bf16 against
             transformers' reference logits and against PyTorch on the same device
  seed       the study's three experiments (bench --preset seed-memory-seq,
             seed-memory-batch, seed-time) at f16 and f32, with NVML memory
  vs-torch   bertbench against PyTorch eager at the seed-time shapes, f16 and f32
  training   a training step (BERT-base 32x384, bf16) by bertbench and by PyTorch
  eval       `bertbench eval` throughput on the dev slice (random weights: speed only)

`--device cpu --quick` dry-runs the same steps on the CPU with the tiny fixture models and
small shapes (what this project's CI machine can do), to check the plumbing.

usage: python3 gpu_check.py OUT [--device cuda:0] [--budget-s 480] [--quick]
"""
import argparse
import glob
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = ("bert", "distilbert", "squeezebert")
STUDY_MODELS = ("bert-base-uncased", "distilbert-base-uncased", "squeezebert/squeezebert-uncased")
# Half precision against f32 references: a logit's error grows with its magnitude and the
# depth; the tiny fixtures' logits are O(1), so 5e-2 absolute is loose for bf16's 8-bit
# mantissa after 2-4 layers and tight enough to catch a wrong kernel (errors of O(1)).
TOLERANCE = {"f32": 1e-4, "f16": 2e-2, "bf16": 5e-2}


def unpack_binary(bundle, out):
    """The bertbench binary: the bundle's own, or its gzipped copy (`prepare` ships it so: the
    CUDA build's embedded kernels make it 65 MB, 18 MB gzipped) unpacked into OUT/bin."""
    plain, packed = bundle / "bertbench", bundle / "bertbench.gz"
    if plain.exists() or not packed.exists():
        return plain
    target = out / "bin" / "bertbench"
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    target.chmod(0o755)
    return target


class Check:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.bertbench = str(unpack_binary(args.bundle, args.out))
        self.start = time.monotonic()
        self.steps = []
        self.env = dict(os.environ)
        self.sections = []

    def left(self):
        return self.args.budget_s - (time.monotonic() - self.start)

    def run(self, cmd, timeout, log):
        """Runs bertbench (or anything) with the libraries found, within `timeout` seconds
        and what is left of the budget; returns (returncode or None on timeout, stdout)."""
        timeout = max(1.0, min(timeout, self.left()))
        with open(log, "w") as err:
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                   timeout=timeout, env=self.env)
                return p.returncode, p.stdout
            except subprocess.TimeoutExpired:
                return None, ""

    def step(self, name, budget, fn):
        """Runs step `fn` (which returns what it found) unless the budget is spent; a step
        that raises is recorded as failed and the next one runs."""
        began = time.monotonic()
        if self.left() < 5:
            self.steps.append({"step": name, "status": "skipped", "why": "budget spent"})
            return
        (self.out / name).mkdir(parents=True, exist_ok=True)
        try:
            found = fn(self.out / name, min(budget, self.left()))
            status = found.pop("status", "ok")
        except Exception as e:  # a step's failure is data; the check goes on
            found, status = {"error": f"{type(e).__name__}: {e}"}, "failed"
        row = {"step": name, "status": status, "seconds": round(time.monotonic() - began, 1)}
        row.update(found)
        self.steps.append(row)
        print(f"[{name}] {status} in {row['seconds']} s", flush=True)
        self.write()

    def write(self):
        (self.out / "steps.json").write_text(json.dumps(self.steps, indent=2) + "\n")
        lines = [f"# GPU check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
        lines += [f"- Device: `{self.args.device}`{' (quick dry run)' if self.args.quick else ''}",
                  f"- Host: {platform.node()}, Python {platform.python_version()}", ""]
        lines += ["| step | status | seconds |", "|---|---|---:|"]
        lines += [f"| {s['step']} | {s['status']} | {s.get('seconds', '-')} |" for s in self.steps]
        for title, body in self.sections:
            lines += ["", f"## {title}", ""] + body
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


def libraries(ck, d, budget):
    """The GPU, its driver, and the CUDA libraries bertbench will load."""
    found = {}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True,
                           timeout=30)
        found["gpus"] = q.stdout.strip().splitlines()
    else:
        found["gpus"] = []
    # The nvidia-* wheels PyTorch ships with (cuBLAS, cuRAND, NVRTC, the runtime): their lib
    # folders go on the loader's path, as the image has no system CUDA toolkit.
    dirs = sorted({str(Path(p).parent) for base in sys.path if base
                   for p in glob.glob(os.path.join(base, "nvidia", "*", "lib", "lib*.so*"))})
    found["wheel_lib_dirs"] = dirs
    if dirs:
        ck.env["LD_LIBRARY_PATH"] = ":".join(dirs + [ck.env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    names = sorted({Path(p).name for d_ in dirs for p in glob.glob(os.path.join(d_, "lib*.so*"))})
    found["wheel_libs"] = names
    wanted = ("libcublas", "libcublasLt", "libcurand", "libnvrtc", "libcudart")
    found["missing"] = [w for w in wanted if not any(n.startswith(w + ".so") for n in names)]
    try:
        import ctypes
        ctypes.CDLL("libcuda.so.1")
        found["driver_libcuda"] = True
    except OSError:
        found["driver_libcuda"] = False
    not_found = ldd_not_found(ck, d)
    # No libcuRAND there: the stub prepare carried (scripts/cuda-stubs.py; bertbench draws no
    # random numbers on a GPU, and candle only creates a generator).
    stub = ck.args.bundle / "curand-stub"
    linked = "libcurand.so" in (d / "ldd.txt").read_text()
    found["curand"] = "real" if linked else "not linked (a CPU build)"
    if any(l.startswith("libcurand.so") for l in not_found) and stub.is_dir():
        ck.env["LD_LIBRARY_PATH"] = ":".join(
            [p for p in ck.env.get("LD_LIBRARY_PATH", "").split(":") if p] + [str(stub)])
        not_found = ldd_not_found(ck, d)
        found["curand"] = "stub (no libcurand.so.10 on this machine)"
    found["ldd_not_found"] = not_found
    rc, out = ck.run([ck.bertbench, "--version"], 30, d / "version.log")
    found["bertbench"] = out.strip()
    body = [f"- GPUs: {', '.join(found['gpus']) or 'none found by nvidia-smi'}",
            f"- libcuda (driver): {'found' if found['driver_libcuda'] else 'NOT FOUND'}",
            f"- CUDA wheels on the loader path: {len(dirs)} folders; missing: "
            f"{', '.join(found['missing']) or 'none'}",
            f"- `ldd` not found: {', '.join(found['ldd_not_found']) or 'none'}",
            f"- libcurand: {found['curand']}",
            f"- {found['bertbench']}"]
    ck.sections.append(("Libraries", body))
    if ck.args.device != "cpu" and not found["driver_libcuda"]:
        found["status"] = "failed"
    return found


def ldd_not_found(ck, d):
    """The libraries the binary needs that the loader cannot find with `ck.env`, and the
    symbols the libraries it finds lack (`ldd -r`: the binary was linked against stubs of
    CUDA 13's, so an older library shows here); ldd.txt keeps the whole answer."""
    ldd = subprocess.run(["ldd", "-r", ck.bertbench], capture_output=True, text=True,
                         timeout=30, env=ck.env)
    (d / "ldd.txt").write_text(ldd.stdout + ldd.stderr)
    return [l.strip() for l in (ldd.stdout + ldd.stderr).splitlines()
            if "not found" in l or "undefined symbol" in l]


def torch_qa(model_dir, device, dtype):
    import torch
    from transformers import AutoModelForQuestionAnswering
    m = AutoModelForQuestionAnswering.from_pretrained(str(model_dir))
    m.eval()
    return m.to(device=torch_device(device), dtype=torch_dtype(dtype))


def torch_device(device):
    return "cuda:" + device.split(":")[1] if device.startswith("cuda:") else device


def torch_dtype(dtype):
    import torch
    return {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def parity(ck, d, budget):
    """Logits on the GPU in each precision against transformers' f32 reference (the
    fixture) and against PyTorch in the same precision on the same device."""
    rows, worst_ok = [], True
    for family in FAMILIES:
        fixture = ck.args.bundle / "fixtures" / "parity" / family
        expected = json.loads((fixture / "expected.json").read_text())
        want = expected["outputs"]
        for dtype in ("f32", "f16", "bf16"):
            cmd = [ck.bertbench, "logits", "--model", str(fixture), "--inputs",
                   str(fixture / "expected.json"), "--device", ck.args.device, "--dtype", dtype]
            rc, out = ck.run(cmd, 60, d / f"{family}-{dtype}.log")
            row = {"family": family, "dtype": dtype, "rc": rc}
            if rc == 0:
                got = json.loads(out)
                row["vs_transformers_f32"] = max(max_diff(got[k], want[k])
                                                 for k in ("start_logits", "end_logits"))
                row["tolerance"] = TOLERANCE[dtype]
                row["within"] = row["vs_transformers_f32"] <= TOLERANCE[dtype]
                try:
                    import torch
                    m = torch_qa(fixture, ck.args.device, dtype)
                    inp = expected["inputs"]
                    kw = {k: torch.tensor(v, device=torch_device(ck.args.device))
                          for k, v in inp.items() if v is not None}
                    if family == "distilbert":
                        kw.pop("token_type_ids", None)
                    with torch.inference_mode():
                        o = m(**kw)
                    t = {"start_logits": o.start_logits.float().tolist(),
                         "end_logits": o.end_logits.float().tolist()}
                    row["vs_torch_same_dtype"] = max(max_diff(got[k], t[k]) for k in t)
                except Exception as e:
                    row["torch_error"] = f"{type(e).__name__}: {e}"
                worst_ok &= row["within"]
            else:
                log = (d / f"{family}-{dtype}.log").read_text().strip().splitlines()
                row["error"] = log[-1] if log else ("timeout" if rc is None else f"exit {rc}")
                # Half precision the device refuses (f16 on the CPU) is a refusal, not a fault.
                if not (ck.args.device == "cpu" and dtype != "f32" and rc in (3, 4)):
                    worst_ok = False
            rows.append(row)
    fmt = lambda v: f"{v:.2e}" if isinstance(v, float) else "-"
    body = ["| family | dtype | vs transformers f32 | tolerance | vs PyTorch, same dtype | |",
            "|---|---|---:|---:|---:|---|"]
    for r in rows:
        note = "ok" if r.get("within") else r.get("error", "over tolerance")
        body.append(f"| {r['family']} | {r['dtype']} | {fmt(r.get('vs_transformers_f32'))} | "
                    f"{TOLERANCE[r['dtype']]:.0e} | {fmt(r.get('vs_torch_same_dtype'))} | {note} |")
    ck.sections.append(("Parity", body))
    return {"rows": rows, "status": "ok" if worst_ok else "failed"}


def models_and_grid(ck, preset):
    """The study's models and the preset's grid, or on a quick dry run the tiny fixtures
    and small shapes."""
    if not ck.args.quick:
        return list(STUDY_MODELS), ["--preset", preset]
    fixtures = [str(ck.args.bundle / "fixtures" / "parity" / f) for f in FAMILIES]
    return fixtures, ["--batch-sizes", "1", "2", "--sequence-lengths", "8", "16"]


def bench_median_ms(results_json):
    r = json.loads(Path(results_json).read_text())
    out = {}
    for m in r["measurements"]:
        c = m["cell"]
        if m["status"] == "ok" and m.get("speed"):
            key = (c["model"], c["batch_size"], c["sequence_length"], c.get("dtype") or "f32")
            out[key] = m["speed"]["summary"]["median"] * 1e3
    return out


def bench_energy_j_per_1k(results_json):
    """Joules per 1,000 sequences of each timed cell, where bench recorded its GPU's energy
    (NVML), with how it was measured ("counter" or "power_times_time")."""
    r = json.loads(Path(results_json).read_text())
    out = {}
    for m in r["measurements"]:
        c, e = m["cell"], (m.get("speed") or {}).get("energy")
        if m["status"] == "ok" and e and e["sequences"] > 0:
            key = (c["model"], c["batch_size"], c["sequence_length"], c.get("dtype") or "f32")
            out[key] = (1000.0 * e["joules"] / e["sequences"], e["source"])
    return out


class TorchEnergy:
    """PyTorch's side of the energy figure: NVML's energy counter read around a timed region
    through pynvml, where it is installed and the driver has the counter; else nothing."""

    def __init__(self, device):
        self.handle = None
        if not device.startswith("cuda"):
            return
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(int(device.split(":")[1]))
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:  # no pynvml, no driver, or no counter on this GPU
            self.handle = None

    def read_mj(self):
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) if self.handle else None


def seed(ck, d, budget):
    """The study's three experiments, at f16 and f32 (f32 only on a quick CPU run)."""
    dtypes = ["f32"] if ck.args.device == "cpu" else ["f16", "f32"]
    done, failed = [], []
    presets = ("seed-memory-seq", "seed-memory-batch", "seed-time")
    for preset in presets:
        models, grid = models_and_grid(ck, preset)
        out = d / preset
        cmd = [ck.bertbench, "bench", *grid, "--models", *models, "--device", ck.args.device,
               "--dtype", *dtypes, "--repeat", "3", "--min-time", "0.3", "--max-time", "5",
               "--no-peak", "--output-dir", str(out)]
        rc, _ = ck.run(cmd, budget / len(presets), d / f"{preset}.log")
        (done if rc == 0 else failed).append(preset)
    ck.sections.append(("The study's experiments",
                        [f"- done: {', '.join(done) or 'none'}; failed or timed out: "
                         f"{', '.join(failed) or 'none'}",
                         "- each folder holds the Hugging Face CSVs, results.csv/json and "
                         "env.csv; `bertbench report` draws them"]))
    return {"done": done, "failed": failed, "status": "ok" if not failed else "failed"}


def torch_time_ms(fn, device, min_runs=5, min_s=0.5, energy=None):
    """(median ms of `fn()`, millijoules the timed runs used or None, runs timed), the device
    synchronised around each run, after warm-up; the energy where `energy` (a TorchEnergy)
    reads one."""
    if device.startswith("cuda"):
        import torch
        sync = torch.cuda.synchronize
    else:
        def sync():
            pass
    for _ in range(3):
        fn()
    sync()
    start_mj = energy.read_mj() if energy else None
    times, began = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - began < min_s:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 200:
            break
    used_mj = energy.read_mj() - start_mj if start_mj is not None else None
    return statistics.median(times), used_mj, len(times)


def torch_model(name_or_dir, device, dtype):
    """A random-init transformers QA model of the study's configs (speed does not depend on
    the weights), or a fixture directory's."""
    import torch
    from transformers import (AutoModelForQuestionAnswering, BertConfig, DistilBertConfig,
                              SqueezeBertConfig)
    configs = {"bert-base-uncased": BertConfig, "distilbert-base-uncased": DistilBertConfig,
               "squeezebert/squeezebert-uncased": SqueezeBertConfig}
    torch.manual_seed(0)
    if name_or_dir in configs:
        m = AutoModelForQuestionAnswering.from_config(configs[name_or_dir]())
    else:
        m = AutoModelForQuestionAnswering.from_pretrained(name_or_dir)
    return m.eval().to(device=torch_device(device), dtype=torch_dtype(dtype))


def vs_torch(ck, d, budget):
    """bertbench against PyTorch eager at the seed-time shapes (batch 256, sequence 8-512),
    and against `torch.compile` at sequence 128 where the step's time allows (a compile takes
    tens of seconds; not on a quick CPU run)."""
    import torch
    step_end = time.monotonic() + budget
    models, grid = models_and_grid(ck, "seed-time")
    dtypes = ["f32"] if ck.args.device == "cpu" else ["f16", "f32"]
    out = d / "bertbench"
    cmd = [ck.bertbench, "bench", *grid, "--models", *models, "--device", ck.args.device,
           "--dtype", *dtypes, "--repeat", "5", "--min-time", "0.5", "--max-time", "5",
           "--no-memory", "--no-peak", "--output-dir", str(out)]
    rc, _ = ck.run(cmd, budget / 2, d / "bertbench.log")
    ours = bench_median_ms(out / "results.json") if rc == 0 else {}
    our_energy = bench_energy_j_per_1k(out / "results.json") if rc == 0 else {}
    meter = TorchEnergy(ck.args.device)
    rows, built = [], {}
    for (model, b, s, dtype), ms in sorted(ours.items()):
        if ck.left() < 10:
            break
        # One model per name and precision, for all its shapes (building BERT-base on a GPU
        # takes seconds: once per shape would eat the step's budget).
        if (model, dtype) not in built:
            built.clear()
            built[(model, dtype)] = torch_model(model, ck.args.device, dtype)
        m = built[(model, dtype)]
        vocab = m.config.vocab_size
        ids = torch.randint(0, vocab, (b, s), device=torch_device(ck.args.device))
        with torch.inference_mode():
            t, mj, runs = torch_time_ms(lambda: m(input_ids=ids), ck.args.device, energy=meter)
        ours_j = our_energy.get((model, b, s, dtype))
        rows.append({"model": model, "batch": b, "seq": s, "dtype": dtype, "bertbench_ms": ms,
                     "torch_eager_ms": t, "torch_over_bertbench": t / ms,
                     "bertbench_j_per_1k_seq": ours_j[0] if ours_j else None,
                     "bertbench_energy_source": ours_j[1] if ours_j else None,
                     "torch_j_per_1k_seq": mj / runs / b if mj is not None else None})

    built.clear()
    for r in rows:
        # Each compile needs about 40 s of the step left; the shapes nearest 128 only.
        if ck.args.quick or r["seq"] != 128 or time.monotonic() > step_end - 40:
            continue
        try:
            compiled = torch.compile(torch_model(r["model"], ck.args.device, r["dtype"]))
            ids = torch.randint(0, compiled.config.vocab_size, (r["batch"], r["seq"]),
                                device=torch_device(ck.args.device))
            with torch.inference_mode():  # the warm-up runs compile
                r["torch_compile_ms"], _, _ = torch_time_ms(lambda: compiled(input_ids=ids),
                                                            ck.args.device)
        except Exception as e:  # a compile that fails is a finding, not the step's end
            r["torch_compile_error"] = f"{type(e).__name__}: {e}"[:300]
        compiled = None  # the next compile's memory

    def joules(x):
        return "-" if x is None else f"{x:.1f}"

    def compiled_ms(r):
        return f"{r['torch_compile_ms']:.3f}" if "torch_compile_ms" in r else "-"
    body = ["| model | batch x seq | dtype | bertbench ms | PyTorch eager ms | PyTorch / bertbench "
            "| torch.compile ms | bertbench J/1k seq | PyTorch J/1k seq |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    body += [f"| {Path(r['model']).name} | {r['batch']}x{r['seq']} | {r['dtype']} | "
             f"{r['bertbench_ms']:.3f} | {r['torch_eager_ms']:.3f} | {r['torch_over_bertbench']:.2f} "
             f"| {compiled_ms(r)} | {joules(r['bertbench_j_per_1k_seq'])} "
             f"| {joules(r['torch_j_per_1k_seq'])} |"
             for r in rows]
    body += ["", "Energy: NVML's counter over the timed runs, the whole GPU's (bertbench's "
             "`power_times_time` where the driver has no counter; PyTorch's through pynvml, `-` "
             "where it is not installed)."]
    ck.sections.append(("bertbench against PyTorch eager", body))
    return {"rows": rows, "status": "ok" if rc == 0 and rows else "failed"}


def training(ck, d, budget):
    """One training step, BERT-base 32x384 in bf16 (on a quick CPU run: the tiny BERT, f32,
    2x16), by bertbench and by PyTorch (autocast, AdamW)."""
    import torch
    if ck.args.quick:
        model, b, s, dtype = str(ck.args.bundle / "fixtures" / "parity" / "bert"), 2, 16, "f32"
    else:
        model, b, s, dtype = "bert-base-uncased", 32, 384, "bf16"
    out = d / "bertbench"
    cmd = [ck.bertbench, "bench", "--training", "--no-inference", "--models", model, "--batch-sizes",
           str(b), "--sequence-lengths", str(s), "--device", ck.args.device, "--dtype", dtype,
           "--repeat", "3", "--min-time", "0.5", "--max-time", "20", "--no-peak",
           "--output-dir", str(out)]
    rc, _ = ck.run(cmd, budget / 2, d / "bertbench.log")
    ours = bench_median_ms(out / "results.json") if rc == 0 else {}
    ms = next(iter(ours.values()), None)
    dev = torch_device(ck.args.device)
    m = torch_model(model, ck.args.device, "f32").train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-5)
    ids = torch.randint(0, m.config.vocab_size, (b, s), device=dev)
    pos = torch.randint(0, s, (b,), device=dev)
    amp = torch_dtype(dtype) if dtype != "f32" else None

    def step():
        with torch.autocast(device_type=dev.split(":")[0], dtype=amp, enabled=amp is not None):
            loss = m(input_ids=ids, start_positions=pos, end_positions=pos).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t, _, _ = torch_time_ms(step, ck.args.device, min_runs=3, min_s=1.0)
    ck.sections.append(("A training step", [
        f"- {Path(model).name} {b}x{s}, {dtype}: bertbench "
        f"{'%.1f ms' % ms if ms else 'failed'}, PyTorch eager (autocast, AdamW) {t:.1f} ms"]))
    return {"bertbench_ms": ms, "torch_ms": t, "status": "ok" if ms else "failed"}


def evaluation(ck, d, budget):
    """`eval` throughput on the dev slice: a random-init model (the answers mean nothing; the
    questions and windows per second are the point)."""
    model = "bert-base-uncased"
    dtype = "f32" if ck.args.device == "cpu" else "f16"
    limit = ["--limit", "20"] if ck.args.quick else []
    cmd = [ck.bertbench, "eval", "--model", model, "--random-init", "--dataset",
           str(ck.args.bundle / "dev-slice.json"), *limit, "--tokenizer",
           str(ck.args.bundle / "vocab.txt"), "--device", ck.args.device, "--dtype", dtype,
           "--output-dir", str(d / "eval"), "--overwrite"]
    rc, _ = ck.run(cmd, budget, d / "eval.log")
    if rc != 0:
        return {"status": "failed" if rc is not None else "timeout"}
    r = json.loads((d / "eval" / "eval_results.json").read_text())
    ck.sections.append(("eval throughput", [
        f"- {Path(model).name} {dtype}: {r['questions_per_s']:.1f} questions/s, "
        f"{r['windows_per_s']:.1f} windows/s in the model ({r['questions']} questions)"]))
    return {"questions_per_s": r["questions_per_s"], "windows_per_s": r["windows_per_s"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (created; must not exist)")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="the whole check's seconds (default 480: 8 minutes)")
    p.add_argument("--quick", action="store_true",
                   help="tiny models and shapes: a dry run of the plumbing (with --device cpu)")
    p.add_argument("--bundle", type=Path, default=HERE,
                   help="the folder `gpu-check.sh prepare` gathered (default: this script's)")
    args = p.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; give a new folder")
    args.out.mkdir(parents=True)
    ck = Check(args)
    # Each step's share of the budget; a step ends early when done and leaves the rest on.
    ck.step("libraries", 30, lambda d, b: libraries(ck, d, b))
    ck.step("parity", 60, lambda d, b: parity(ck, d, b))
    ck.step("seed", 180, lambda d, b: seed(ck, d, b))
    ck.step("vs-torch", 120, lambda d, b: vs_torch(ck, d, b))
    ck.step("training", 60, lambda d, b: training(ck, d, b))
    ck.step("eval", 30, lambda d, b: evaluation(ck, d, b))
    ck.write()
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'steps.json'}")
    sys.exit(0 if all(s["status"] == "ok" for s in ck.steps) else 1)


if __name__ == "__main__":
    main()
