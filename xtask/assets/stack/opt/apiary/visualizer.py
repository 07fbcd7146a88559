"""The visualizer of the tutorial's stack, stood in for: a page on :8080
that says whether the Docker socket it mounts is there (the real
visualizer is Apiary's own, issue 16)."""
import http.server
import json
import os

SOCK = "/var/run/docker.sock"


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "visualizer": "stand-in",
            "docker_sock": os.path.exists(SOCK),
            "client": self.client_address[0],
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Page).serve_forever()
