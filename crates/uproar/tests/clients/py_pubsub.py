"""Pub/sub through the uproar server with Python's `websockets`: two subscribers and a
publisher on one topic; text and binary from 1 B to 1 MiB reach both subscribers intact and in
order. Usage: py_pubsub.py BASE_URL TOPIC (BASE_URL ws://HOST:PORT or wss://HOST:PORT; for
wss:// the CA in the PEM file UPROAR_TEST_CA is the only one trusted). Prints "ok"."""
import os
import ssl
import sys

from websockets.sync.client import connect

SIZES = [1, 125, 126, 16383, 16384, 16385, 65536, 1 << 20]


def main(base, topic):
    ctx = ssl.create_default_context(cafile=os.environ["UPROAR_TEST_CA"]) if base.startswith("wss://") else None
    opts = dict(max_size=None, compression=None, open_timeout=30, close_timeout=10, ssl=ctx)
    subs = [connect(f"{base}/ws/{topic}?mode=sub", **opts) for _ in range(2)]
    pub = connect(f"{base}/ws/{topic}?mode=pub", **opts)
    for n in SIZES:
        text = "".join(chr(0x61 + (i * 7) % 26) for i in range(n))
        data = bytes((i * 13) % 256 for i in range(n))
        # Each message is read before the next is published: two 1 MiB messages at once could
        # pass the server's default 1 MiB backlog per subscriber (closed 1008, slow consumer).
        for want in (text, data):
            pub.send(want)
            for s in subs:
                got = s.recv(timeout=10)
                assert got == want, f"{type(want).__name__} of {n} bytes came back different"
    for ws in subs + [pub]:
        ws.close()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
