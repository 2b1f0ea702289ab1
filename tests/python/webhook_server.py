"""A small admission webhook over HTTPS for tests/tests/api_security.rs.

Usage: webhook_server.py CERT KEY. Listens on 127.0.0.1 on a free port and prints it as the
first line. Paths: /validate denies objects labelled sk-deny=true (403, "sk-webhook says no")
and warns otherwise; /mutate adds the label sk-mutated=yes with a JSONPatch; /slow answers
after 3 s.
"""
import base64
import json
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        review = json.loads(self.rfile.read(length))
        req = review["request"]
        obj = req.get("object") or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        name = (obj.get("metadata") or {}).get("name", "")
        resp = {"uid": req["uid"], "allowed": True}
        path = self.path.split("?")[0]
        if path == "/validate":
            if labels.get("sk-deny") == "true":
                resp["allowed"] = False
                resp["status"] = {"code": 403, "reason": "Forbidden", "message": "sk-webhook says no"}
            else:
                resp["warnings"] = ["sk-webhook saw " + name + " as " + req["userInfo"]["username"]]
        elif path == "/mutate":
            if labels:
                patch = [{"op": "add", "path": "/metadata/labels/sk-mutated", "value": "yes"}]
            else:
                patch = [{"op": "add", "path": "/metadata/labels", "value": {"sk-mutated": "yes"}}]
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        elif path == "/slow":
            time.sleep(3)
        out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def main():
    cert, key = sys.argv[1], sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
