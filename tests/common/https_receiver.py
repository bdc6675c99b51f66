"""An HTTPS server for the tests (Python's ssl, i.e. OpenSSL: not the TLS stack Fathom uses).

Usage: https_receiver.py CERT KEY LOG [CLIENT_CA]

Answers every POST with 200 and {"prediction": 0.5} (a model answer in the `json` protocol, and
a fine answer for a webhook), appending each request to LOG as a JSON line {"path", "headers",
"body"}. With CLIENT_CA it requires a client certificate signed by that CA (mutual TLS); a
handshake without one fails. Prints its port on stdout once listening.
"""
import http.server
import json
import ssl
import sys

cert, key, log = sys.argv[1:4]
client_ca = sys.argv[4] if len(sys.argv) > 4 else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        peer = self.connection.getpeercert()
        entry = {"path": self.path, "headers": dict(self.headers), "body": body.decode(),
                 "client": dict(x[0] for x in peer["subject"]) if peer else None}
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        answer = json.dumps({"prediction": 0.5}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
if client_ca:
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_ca)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
