"""A stand-in for a vLLM OpenAI-compatible server started with `--enable-lora` and runtime LoRA updating, for the
tests of Tuneboard's routing to vLLM on a machine where vLLM cannot run (no GPU).

It speaks the part of vLLM's HTTP API Tuneboard uses, as vLLM answers it: `GET /v1/models` (the base without a
`parent`, each loaded adapter with the base as its `parent`), `POST /v1/load_lora_adapter` (the adapter folder is
read from disk at `lora_path`, as vLLM reads it; a name already loaded is a 400), `POST /v1/chat/completions`
(streamed chunks, a usage chunk with `stream_options.include_usage`, `[DONE]`; an unknown model is vLLM's 404).
Replies are real greedy generations of the model (transformers + PEFT), token by token. `/standin/*` are the
test's own: how many loads it made, and forgetting its adapters as a restarted server does.

Run: python -m tests.inference.vllm_standin --model DIR --served-model-name NAME --port PORT
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def build_app(model_dir: str, served_name: str) -> FastAPI:
    app = FastAPI()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    state = {"model": AutoModelForCausalLM.from_pretrained(model_dir).eval(), "adapters": {}, "adapter_loads": 0,
             "requests": []}
    lock = threading.Lock()

    def not_found(name: str) -> JSONResponse:
        return JSONResponse({"object": "error", "message": f"The model `{name}` does not exist.",
                             "type": "NotFoundError", "param": None, "code": 404}, status_code=404)

    @app.get("/v1/models")
    def models():
        data = [{"id": served_name, "object": "model", "root": model_dir, "parent": None}]
        data += [{"id": name, "object": "model", "root": path, "parent": served_name}
                 for name, path in state["adapters"].items()]
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request):
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        if name in state["adapters"]:
            return JSONResponse({"object": "error", "message": f"The lora adapter '{name}' has already been loaded.",
                                 "type": "InvalidUserInput", "param": None, "code": 400}, status_code=400)
        with lock:
            model = state["model"]
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name)
            else:
                state["model"] = PeftModel.from_pretrained(model, path, adapter_name=name).eval()
            state["adapters"][name] = path
            state["adapter_loads"] += 1
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        name = body["model"]
        if name != served_name and name not in state["adapters"]:
            return not_found(name)
        state["requests"].append(name)
        inputs = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with lock:
            model = state["model"]
            if isinstance(model, PeftModel):
                if name == served_name:
                    context = model.disable_adapter()
                else:
                    model.set_adapter(name)
                    context = torch.inference_mode()
            else:
                context = torch.inference_mode()
            with context, torch.inference_mode():
                output = model.generate(**inputs, max_new_tokens=body.get("max_tokens", 16), do_sample=False,
                                        pad_token_id=tokenizer.eos_token_id)
        tokens = output[0][inputs["input_ids"].shape[1]:].tolist()
        ended = bool(tokens) and tokens[-1] == tokenizer.eos_token_id
        pieces = [tokenizer.decode([token], skip_special_tokens=True) for token in tokens]
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": int(inputs["input_ids"].shape[1]), "completion_tokens": len(tokens),
                 "total_tokens": int(inputs["input_ids"].shape[1]) + len(tokens)}
        finish = "stop" if ended else "length"

        def chunk(delta: dict, finish_reason=None, with_usage=None) -> str:
            event = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [] if with_usage else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            if with_usage:
                event["usage"] = with_usage
            return f"data: {json.dumps(event)}\n\n"

        def events():
            yield chunk({"role": "assistant", "content": ""})
            for piece in pieces:
                if piece:
                    yield chunk({"content": piece})
            yield chunk({}, finish_reason=finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield chunk({}, with_usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/standin/stats")
    def stats():
        return {"adapter_loads": state["adapter_loads"], "adapters": sorted(state["adapters"]),
                "requests": state["requests"]}

    @app.post("/standin/forget")
    def forget():
        with lock:
            model = state["model"]
            if isinstance(model, PeftModel):
                state["model"] = model.unload()
            state["adapters"].clear()
        return {"forgotten": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model, args.served_model_name), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
