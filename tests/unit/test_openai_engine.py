"""The `openai` engine without Ray: the rate limit it can enforce, and the one direct request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from syneg_ray.config import Engine, OpenAIEngineConfig, SynthesizeConfig
from syneg_ray.engines import openai
from syneg_ray.errors import ConfigError, EngineError


def limited(rpm: int, replicas: int = 1) -> SynthesizeConfig:
    # port 9 answers nothing: a test that reached the server would fail with EngineError
    return SynthesizeConfig(engine=Engine.OPENAI, replicas=replicas,
                            openai=OpenAIEngineConfig(base_url="http://127.0.0.1:9/v1", requests_per_minute=rpm))


def test_requests_per_minute_split_across_replicas() -> None:
    assert openai.qps_per_replica(limited(0)) is None  # 0 = unlimited
    assert openai.qps_per_replica(limited(600, replicas=2)) == 5
    assert openai.qps_per_replica(limited(150, replicas=2)) == 1  # rounded down: never more than the share


def test_a_limit_below_one_request_per_second_per_replica_is_refused() -> None:
    # Ray's qps is a whole number per actor: 30/min used to become 60/min, twice the limit asked for
    with pytest.raises(ConfigError, match=r"synthesize.openai.requests_per_minute = 30 .*= 60"):
        openai.qps_per_replica(limited(30))
    with pytest.raises(ConfigError, match=r"synthesize.openai.requests_per_minute = 100 .*= 120"):
        openai.qps_per_replica(limited(100, replicas=2))
    with pytest.raises(ConfigError, match="requests_per_minute"):  # before the server is asked anything
        openai.build(limited(30), "m")


@pytest.fixture
def server() -> Iterator[tuple[str, dict]]:
    """A local OpenAI-compatible stub: /v1/models lists one model; /v1/chat/completions answers `reply`."""
    reply: dict = {"status": 200, "body": {}}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"data": [{"id": "m"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(reply["status"], reply["body"])

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", reply
    httpd.shutdown()
    httpd.server_close()


def test_chat_once_returns_the_answer_or_raises(server) -> None:
    url, reply = server
    cfg = SynthesizeConfig(engine=Engine.OPENAI, openai=OpenAIEngineConfig(base_url=url))
    messages = [{"role": "user", "content": "domains?"}]
    reply["body"] = {"choices": [{"message": {"content": '{"domains": ["A", "B"]}'}}]}
    assert openai.chat_once(cfg, "m", messages, 16) == '{"domains": ["A", "B"]}'
    # a failed request used to come back as '' and pass for an LLM that proposed no domains
    reply.update(status=500, body={"error": "boom"})
    with pytest.raises(EngineError, match=r"/v1/chat/completions answered HTTP 500 .*synthesize.attribute_pools"):
        openai.chat_once(cfg, "m", messages, 16)
    reply.update(status=200, body={"error": {"message": "model m is not loaded"}})
    with pytest.raises(EngineError, match="answered with an error: .*model m is not loaded"):
        openai.chat_once(cfg, "m", messages, 16)
