"""A JSON webhook receiver for bench/compose_scale.py, run in its own container (the sentinel image has Python):
POST /hook answers 200 and appends one line per request to the output file:
``{"key": <Idempotency-Key>, "repeat": <key seen before>, "body": <the JSON body>}``. A receiver honouring the
notifier's Idempotency-Key processes the lines with ``repeat`` false; every line is what arrived. Standard library
only, so it needs nothing beyond the image.

    python webhook_receiver.py /out/webhook.jsonl [port]     # default port 8080
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(out_path: str, port: int) -> None:
    lock = threading.Lock()
    seen: set[str] = set()
    out = open(out_path, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Idempotency-Key")
            try:
                doc = json.loads(body)
            except ValueError:
                doc = body.decode("utf-8", "replace")
            with lock:
                repeat = key is not None and key in seen
                if key is not None:
                    seen.add(key)
                out.write(json.dumps({"key": key, "repeat": repeat, "body": doc}, separators=(",", ":")) + "\n")
                out.flush()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:  # one line per request is noise here
            return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in its container: no default SIGTERM action
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"webhook receiver on :{port}/hook, writing {out_path}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8080)
