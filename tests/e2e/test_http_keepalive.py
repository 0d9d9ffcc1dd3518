"""The gateway keeps an idle client connection open past uvicorn's own 5 s (INGOT_HTTP_KEEPALIVE, default 75 s):
load balancers and client pools reuse idle connections for up to 60 s, and a connection the server closes just as a
client reuses it fails that request."""
from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.e2e

IDLE_S = 6.5  # past uvicorn's default keep-alive of 5 s


def test_an_idle_connection_is_still_served_after_uvicorns_default_keepalive(ingot_stack):
    url = urlsplit(ingot_stack.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", "/health")
        first = connection.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("connection", "keep-alive").lower() != "close"
        local_port = connection.sock.getsockname()[1]
        time.sleep(IDLE_S)
        # http.client never reconnects on its own: a connection the server closed meanwhile raises here
        connection.request("GET", "/health")
        second = connection.getresponse()
        second.read()
        assert second.status == 200
        assert connection.sock.getsockname()[1] == local_port  # the same connection, not a new one
    finally:
        connection.close()
