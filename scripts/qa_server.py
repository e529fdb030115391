#!/usr/bin/env python3
"""The server a user would deploy instead of `bertbench serve`: transformers'
`pipeline("question-answering")` behind FastAPI under uvicorn, one model per process, on
PyTorch (eager, fp32 or dynamically quantized int8) or ONNX Runtime (an ONNX Runtime session
inside the same pipeline: the pipeline's windows and decoding, the session's forward pass, as
optimum's ORTModelForQuestionAnswering does; optimum itself does not import with this torch).

Speaks Hugging Face's question-answering task at `POST /` (`{"inputs": {"question",
"context"}, "parameters": {...}}` -> `{"answer", "score", "start", "end"}`) and answers
`GET /health` once the model is loaded and has answered one warm-up question. One question is
answered at a time (a lock around the pipeline): the model's own threads (`--threads`) do
the parallel work, as in one model per process; requests wait their turn in FastAPI's
thread pool.

Started by scripts/serve_vs_python.py; needs transformers 4.x (5 removed the pipeline).
"""

from __future__ import annotations

import argparse
import threading


def ort_model(args):
    """The model's class without its weights (the pipeline reads its config and type) whose
    forward pass is an ONNX Runtime session over the exported graph."""
    from pathlib import Path

    import onnxruntime as ort
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering
    from transformers.modeling_outputs import QuestionAnsweringModelOutput

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(Path(args.onnx_dir) / args.onnx_file),
                                   sess_options=options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    with torch.device("meta"):
        model = AutoModelForQuestionAnswering.from_config(AutoConfig.from_pretrained(args.model))
    # Storage the forward pass never reads or writes: allocated, never touched, so it takes
    # no resident memory (the pipeline moves the model to the CPU, which a meta one refuses).
    model = model.to_empty(device="cpu")

    def forward(input_ids=None, attention_mask=None, token_type_ids=None, **_):
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = (token_type_ids if token_type_ids is not None
                                       else torch.zeros_like(input_ids)).numpy()
        start, end = session.run(["start_logits", "end_logits"], feeds)
        return QuestionAnsweringModelOutput(start_logits=torch.from_numpy(start),
                                            end_logits=torch.from_numpy(end))

    model.forward = forward
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("torch", "torch-int8", "ort"), required=True)
    ap.add_argument("--model", required=True, help="model directory (config, weights, tokenizer)")
    ap.add_argument("--onnx-dir", help="ort: directory with the .onnx file and config.json")
    ap.add_argument("--onnx-file", default="model.onnx", help="ort: the .onnx file's name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()

    import torch
    import uvicorn
    from fastapi import Body, FastAPI, HTTPException
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.backend == "ort":
        model = ort_model(args)
    else:
        model = AutoModelForQuestionAnswering.from_pretrained(args.model,
                                                              torch_dtype=torch.float32).eval()
        if args.backend == "torch-int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                           dtype=torch.qint8)
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    lock = threading.Lock()

    def answer(question: str, context: str, parameters: dict):
        with lock, torch.inference_mode():
            out = qa(question=question, context=context, **parameters)
        rows = out if isinstance(out, list) else [out]
        rows = [{"answer": r["answer"], "score": float(r["score"]), "start": int(r["start"]),
                 "end": int(r["end"])} for r in rows]
        return rows if isinstance(out, list) else rows[0]

    answer("What is this?", "This is a short context answered once before serving.", {})
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok", "backend": args.backend}

    @app.post("/")
    def task(body: dict = Body(...)):
        try:
            inputs = body["inputs"]
            return answer(inputs["question"], inputs["context"], body.get("parameters") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise HTTPException(status_code=400, detail=f"bad request: {e}") from None

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
