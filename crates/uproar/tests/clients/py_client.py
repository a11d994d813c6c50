"""Drive an echo server with Python's `websockets` (sync client): text and binary from 1 B to
1 MiB, a fragmented message, ping/pong, and a clean close handshake. With a second argument
`deflate`, permessage-deflate is offered and must be accepted. A wss:// URL trusts only the
CA in the PEM file UPROAR_TEST_CA names. Exit 0 and print "ok" on success; any mismatch
raises."""
import os
import ssl
import sys

from websockets.sync.client import connect

SIZES = [1, 125, 126, 65535, 65536, 1 << 20]


def tls_context(url):
    """For wss://: a context that trusts the test CA only (and checks the host name)."""
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=os.environ["UPROAR_TEST_CA"])


def main(url, deflate=False):
    compression = "deflate" if deflate else None
    with connect(url, max_size=None, compression=compression, open_timeout=30, close_timeout=10,
                 ssl=tls_context(url)) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert ("permessage-deflate" in ext) == deflate, f"extensions: {ext!r}"
        for n in SIZES:
            # n bytes of UTF-8, with a two-byte code point at the end when there is room.
            text = "x" * n if n < 3 else "".join(chr(0x61 + i % 26) for i in range(n - 2)) + "é"
            ws.send(text)
            got = ws.recv(timeout=10)
            assert got == text, f"text of {n} bytes came back different"
            data = bytes(i % 251 for i in range(n))
            ws.send(data)
            got = ws.recv(timeout=10)
            assert got == data, f"binary of {n} bytes came back different"
        # A fragmented message: an iterable is sent as one message in several frames.
        ws.send(["frag", "ment", "ed ✓"])
        assert ws.recv(timeout=10) == "fragmented ✓"
        ws.send([b"\x00" * 70000, b"\x01" * 70000])
        assert ws.recv(timeout=10) == b"\x00" * 70000 + b"\x01" * 70000
        pong = ws.ping(b"are you there")
        assert pong.wait(timeout=10), "no pong"
        ws.close(code=1000, reason="done")
        assert ws.close_code == 1000, f"server replied with close code {ws.close_code}"
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], deflate=sys.argv[2:] == ["deflate"])
