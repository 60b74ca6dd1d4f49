"""A webhook receiver for oauthd's notification tests.

Every POST is recorded; with --secret, its Standard Webhooks signature is checked with the
`standardwebhooks` package (the reference library receivers use), and the record says
whether it verified, and when it came (`at`, unix ms). Tests read the records at
GET /_received and make the next N requests fail with POST /_fail?count=N&status=S
(&retry_after=V: with that Retry-After header). Prints "receiver listening on PORT" once ready.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

lock = threading.Lock()
received = []
failures = {"count": 0, "status": 500, "retry_after": None}


def make_handler(webhook):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body=b"", retry_after=None):
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if urlsplit(self.path).path == "/_received":
                with lock:
                    body = json.dumps(received).encode()
                return self.reply(200, body)
            self.reply(404)

        def do_POST(self):
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8")
            if url.path == "/_fail":
                q = parse_qs(url.query)
                with lock:
                    failures["count"] = int(q.get("count", ["1"])[0])
                    failures["status"] = int(q.get("status", ["500"])[0])
                    failures["retry_after"] = q.get("retry_after", [None])[0]
                return self.reply(204)
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = {
                "at": time.time() * 1000,
                "path": url.path,
                "webhook_id": headers.get("webhook-id"),
                "content_type": headers.get("content-type"),
                "title": headers.get("title"),
                "priority": headers.get("priority"),
                "click": headers.get("click"),
                "body": raw,
            }
            try:
                record["json"] = json.loads(raw)
            except ValueError:
                record["json"] = None
            if webhook is not None:
                try:
                    webhook.verify(raw, headers)
                    record["verified"] = True
                except WebhookVerificationError as e:
                    record["verified"] = False
                    record["verify_error"] = str(e)
            retry_after = None
            with lock:
                if failures["count"] > 0:
                    failures["count"] -= 1
                    record["answered"] = failures["status"]
                    retry_after = failures["retry_after"]
                else:
                    record["answered"] = 200
                received.append(record)
                status = record["answered"]
            self.reply(status, retry_after=retry_after)

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", default=None)
    args = parser.parse_args()
    webhook = Webhook(args.secret) if args.secret else None
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(webhook))
    print(f"receiver listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
