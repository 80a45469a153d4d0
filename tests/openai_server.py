"""A minimal OpenAI-compatible server around `HFGenerator`, for offline tests of the `openai` engine.

    python -m tests.openai_server --model smollm2-135m --port 8000     # from the repository root

Serves `GET /v1/models` and `POST /v1/chat/completions` on loopback. A request whose
`response_format` is our hard-negative JSON schema is answered with schema-scaffolded decoding
(always valid JSON); any other request gets a plain greedy continuation. One request at a time:
this is a test fixture, not a production server (use `vllm serve` for that).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from syneg_ray.engines.base import SamplingSpec
from syneg_ray.engines.hf import HFGenerator

logger = logging.getLogger(__name__)


def schema_k(body: dict[str, Any]) -> int | None:
    """k when the request asks for our hard-negative schema, else None."""
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or {}
    negatives = (schema.get("properties") or {}).get("negatives") or {}
    return int(negatives.get("maxItems") or negatives.get("minItems") or 0) or None if negatives else None


class ChatServer:
    """Owns the model; `answer` turns a chat-completions body into a reply body."""

    def __init__(self, model_path: str, name: str, threads: int = 0) -> None:
        self.generator = HFGenerator(model_path, threads=threads)
        self.name = name
        self.lock = threading.Lock()  # one generate at a time: torch already uses every core

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        spec = SamplingSpec(max_new_tokens=int(body.get("max_tokens") or 256), temperature=float(body.get("temperature", 0.7)),
                            top_p=float(body.get("top_p", 1.0)), presence_penalty=float(body.get("presence_penalty", 0.0)))
        k = schema_k(body)
        with self.lock:
            if k:
                gen = self.generator.generate([messages], k, spec, [int(body.get("seed") or 0)])[0]
                text, prompt_tokens, output_tokens = gen.text, gen.prompt_tokens, gen.output_tokens
            else:
                prefill = "{" if (body.get("response_format") or {}).get("type") == "json_object" else ""
                text = self.generator.complete(messages, prefill, spec.max_new_tokens)
                prompt_tokens, output_tokens = 0, len(self.generator.tokenizer(text).input_ids)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()), "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens, "total_tokens": prompt_tokens + output_tokens},
        }


def make_handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one `ChatServer`."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # http.server's naming
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": server.name, "object": "model", "owned_by": "syneg"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self._send(200, server.answer(body))
            except (KeyError, ValueError, TypeError) as exc:
                self._send(400, {"error": {"message": f"bad request: {exc}"}})
            except Exception as exc:  # a model failure is the client's 500; the server lives on
                logger.exception("generation failed")
                self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.debug(fmt, *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    from syneg_ray.registry import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="registry name, local path or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(ChatServer(resolve_model(args.model), args.model, args.threads)))
    logger.info("serving %s on http://%s:%d/v1", args.model, args.host, args.port)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
