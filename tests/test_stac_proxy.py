"""The flaky STAC proxy: what it forwards, how it rewrites links, which faults it injects."""

import http.client
import json
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest

from fixtures.loopback import serve_http
from fixtures.stac_proxy import serve_stac_proxy

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Echo(BaseHTTPRequestHandler):
    """Answers with what it got, links to itself, and 404 on /missing."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._answer(b"")

    def do_POST(self):
        self._answer(self.rfile.read(int(self.headers["Content-Length"])))

    def _answer(self, body):
        base = self.server.url
        data = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "body": body.decode(),
                "header": self.headers.get("X-Test"),
                "links": [{"rel": "next", "href": f"{base}/search?page=2"}],
            }
        ).encode()
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Upstream", "yes")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def fetch(url, body=None):
    request = urllib.request.Request(url, data=body, headers={"X-Test": "1"})
    with DIRECT.open(request, timeout=10) as response:
        return response.headers, json.loads(response.read())


def test_requests_are_forwarded_and_links_point_to_the_proxy():
    with serve_http(_Echo) as upstream, serve_stac_proxy(upstream.url) as proxy:
        headers, got = fetch(f"{proxy.url}/search?bbox=1,2,3,4")
        _, posted = fetch(f"{proxy.url}/search", b'{"limit": 2}')
        with pytest.raises(urllib.error.HTTPError) as error:
            fetch(f"{proxy.url}/missing")
    assert got["method"] == "GET" and got["path"] == "/search?bbox=1,2,3,4"
    assert got["header"] == "1" and headers["X-Upstream"] == "yes"
    assert got["links"][0]["href"] == f"{proxy.url}/search?page=2"  # not the upstream's
    assert posted["method"] == "POST" and posted["body"] == '{"limit": 2}'
    assert error.value.code == 404  # an upstream error is passed on, not turned into a fault
    assert proxy.counts == {"/search": 2, "/missing": 1} and not proxy.injected


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_faults_are_injected_at_the_given_rate(fault):
    with (
        serve_http(_Echo) as upstream,
        serve_stac_proxy(upstream.url, fault_rate=1.0, faults=[fault]) as proxy,
    ):
        with pytest.raises((OSError, http.client.HTTPException)) as error:
            fetch(f"{proxy.url}/search")
        proxy.fault_rate = 0.0  # the outage is over
        _, got = fetch(f"{proxy.url}/search")
    if fault == "503":
        assert error.value.code == 503
    assert proxy.injected == {fault: 1} and proxy.counts["/search"] == 2
    assert got["path"] == "/search"


def test_unknown_faults_are_refused():
    with (
        pytest.raises(ValueError, match="truncate"),
        serve_stac_proxy("http://127.0.0.1:1", faults=["truncate"]),
    ):
        pass
