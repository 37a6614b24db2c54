"""A small stdlib-only web app run *inside* a sandbox by the link tests and the link benchmark.

Usage: python3 link_app.py PORT. Routes:
  GET  /app/            HTML that loads /static/x.js by an absolute path
  GET  /static/x.js     script that writes "absolute-path-ok" into the page
  GET  /redirect        302 to /static/x.js
  GET  /headers         the request line and headers as JSON
  GET  /bytes?n=N       N bytes (deterministic), streamed in 1 MiB pieces, with Content-Length
  GET  /bytes-chunked?n=N   the same bytes, chunked (a chunk per 1 MiB piece)
  GET  /bytes-eof?n=N   the same bytes, ended by closing the connection (no length, no chunks)
  GET  /ping            "pong" (keep-alive, HTTP/1.1)
  GET  /peer            the port this connection comes from (which upstream connection the relay used)
  GET  /drop            "dropped", then closes the connection without saying so (a keep-alive timeout)
  POST|PUT /upload      sha256 and length of the body (Content-Length or chunked), streamed
  GET  /sse             server-sent events: "one", then "two" after POST /release
  POST /release         lets /sse send its second event
  GET  /ws              WebSocket echo (text and binary; answers ping and close)
The sandbox has Debian's python3 with the standard library only, hence the hand-made WebSocket.
"""

import base64
import hashlib
import json
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = threading.Event()
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PAGE = b'<!doctype html><html><head><title>link app</title></head><body><h1 id="t">waiting</h1>' \
       b'<script src="/static/x.js"></script></body></html>'
SCRIPT = b'document.getElementById("t").textContent = "absolute-path-ok";'


def pattern(n):
    block = hashlib.sha256(b"agbox").digest() * (1 << 15)  # 1 MiB
    while n > 0:
        piece = block[:min(n, len(block))]
        n -= len(piece)
        yield piece


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, *args):
        pass

    def send(self, status, body, ctype="text/plain", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/app/":
            self.send(200, PAGE, "text/html")
        elif path == "/static/x.js":
            self.send(200, SCRIPT, "application/javascript")
        elif path == "/redirect":
            self.send(302, b"", headers=[("Location", "/static/x.js")])
        elif path == "/ping":
            self.send(200, b"pong")
        elif path == "/peer":
            self.send(200, str(self.client_address[1]).encode())
        elif path == "/drop":
            self.send(200, b"dropped")
            self.close_connection = True
        elif path == "/headers":
            body = {"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}
            self.send(200, json.dumps(body).encode(), "application/json")
        elif path == "/bytes":
            n = int(query.partition("=")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for piece in pattern(n):
                self.wfile.write(piece)
        elif path == "/bytes-chunked":
            n = int(query.partition("=")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in pattern(n):
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/bytes-eof":
            n = int(query.partition("=")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for piece in pattern(n):
                self.wfile.write(piece)
            self.close_connection = True
        elif path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"data: one\n\n")
            self.wfile.flush()
            RELEASE.wait(60)
            self.wfile.write(b"data: two\n\n")
            self.wfile.flush()
            self.close_connection = True
        elif path == "/ws":
            self.websocket()
        else:
            self.send(404, b"no such page")

    def read_body(self):
        digest, total = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    digest.update(data)
                    left -= len(data)
                    total += len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 1 << 20))
                if not data:
                    break
                digest.update(data)
                left -= len(data)
                total += len(data)
        return digest.hexdigest(), total

    def do_POST(self):
        if self.path == "/release":
            self.read_body()
            RELEASE.set()
            self.send(200, b"released")
            return
        digest, total = self.read_body()
        self.send(200, json.dumps({"sha256": digest, "length": total}).encode(), "application/json")

    do_PUT = do_POST

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b""
            data = self.rfile.read(length)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 8:
                self.frame(8, data[:2])
                return
            if opcode == 9:
                self.frame(10, data)
            elif opcode in (1, 2):
                self.frame(opcode, data)

    def frame(self, opcode, data):
        n = len(data)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + data)
        self.wfile.flush()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
