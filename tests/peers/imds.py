#!/usr/bin/env python3
"""A stand-in for the Azure Instance Metadata Service, for depmap's tests.

  imds.py --instance FILE --log FILE [--port P]
Serves FILE (e.g. ../shared/reference/imds-instance-sample.json) at GET /metadata/instance,
as the service does: the `Metadata: true` header is required (400 without it), an
`api-version` query parameter is required (400 without it), `X-Forwarded-For` is refused.
Every request is logged to the --log file (path, query, headers) before it is answered.
Prints {"listening": port} on stdout; stops on SIGTERM.
"""
import argparse
import json
import signal
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--instance", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    instance = open(a.instance, "rb").read()
    log = open(a.log, "a")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            log.write(json.dumps({"path": url.path, "query": query,
                                  "metadata": self.headers.get("Metadata"),
                                  "forwarded": self.headers.get("X-Forwarded-For")}) + "\n")
            log.flush()
            if self.headers.get("Metadata") != "true" or self.headers.get("X-Forwarded-For"):
                status, body = 400, b'{"error": "Bad request. Required metadata header not specified"}'
            elif "api-version" not in query:
                status, body = 400, b'{"error": "Bad request. api-version is invalid or was not specified in the request."}'
            elif url.path == "/metadata/instance":
                status, body = 200, instance
            else:
                status, body = 404, b'{"error": "Not found"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"listening": srv.server_address[1]}), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
