"""A local OpenAI-compatible chat-completions server for judge tests, run in a thread of the test
process. ``respond(payload, n)`` (n = 1-based request count) returns ``(status, body, delay_s)``;
every request's JSON payload is kept in ``requests``."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]}).encode()


class JudgeServer:
    def __init__(self, respond):
        self.respond, self.requests, self.headers = respond, [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(payload)
                server.headers.append(dict(self.headers))
                status, body, delay = server.respond(payload, len(server.requests))
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def judged_text(payload: dict) -> str:
    """The response a rubric request asks about (between the template's markers)."""
    content = payload["messages"][-1]["content"]
    return content.split("[Assistant's response]\n", 1)[1].rsplit("\n[End of response]", 1)[0]
