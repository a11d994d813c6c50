// Drive an echo server with Node's `ws`: text and binary from 1 B to 1 MiB, a fragmented
// message, ping/pong, and a clean close handshake; with a second argument `deflate`,
// permessage-deflate offered and accepted. A wss:// URL trusts only the CA in the PEM file
// UPROAR_TEST_CA names. Prints "ok" and exits 0 on success.
'use strict';
const fs = require('fs');
const WebSocket = require('ws');
const assert = require('assert');

const SIZES = [1, 125, 126, 65535, 65536, 1 << 20];

function next(ws) {
  return new Promise((resolve, reject) => {
    ws.once('error', reject);
    ws.once('message', (data, isBinary) => {
      ws.off('error', reject);
      resolve({ data, isBinary });
    });
  });
}

async function main(url, deflate) {
  // perMessageDeflate: true offers it with ws's defaults (client_max_window_bits); threshold 0
  // compresses every message, so small ones are exercised too.
  const ws = new WebSocket(url, {
    perMessageDeflate: deflate ? { threshold: 0 } : false,
    maxPayload: 64 << 20,
    ca: url.startsWith('wss://') ? fs.readFileSync(process.env.UPROAR_TEST_CA) : undefined,
  });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  assert.strictEqual(ws.extensions.includes('permessage-deflate'), deflate, `extensions: ${ws.extensions}`);
  for (const n of SIZES) {
    const text = n >= 3 ? 'x'.repeat(n - 2) + 'é' : 'x'.repeat(n);
    ws.send(text);
    let m = await next(ws);
    assert.strictEqual(m.isBinary, false);
    assert.strictEqual(m.data.toString('utf8'), text, `text of ${n} bytes`);
    const bin = Buffer.alloc(n, 0).map((_, i) => i % 251);
    ws.send(bin);
    m = await next(ws);
    assert.strictEqual(m.isBinary, true);
    assert.ok(bin.equals(m.data), `binary of ${n} bytes`);
  }
  // A fragmented message: fin false, then the last fragment.
  ws.send('frag', { fin: false });
  ws.send('ment', { fin: false });
  ws.send('ed ✓', { fin: true });
  const f = await next(ws);
  assert.strictEqual(f.data.toString('utf8'), 'fragmented ✓');
  const pong = new Promise((resolve) => ws.once('pong', resolve));
  ws.ping(Buffer.from('are you there'));
  assert.strictEqual((await pong).toString(), 'are you there');
  const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason })));
  ws.close(1000, 'done');
  const c = await closed;
  assert.strictEqual(c.code, 1000);
  console.log('ok');
}

const timer = setTimeout(() => { console.error('timed out'); process.exit(2); }, 30000);
main(process.argv[2], process.argv[3] === 'deflate').then(() => clearTimeout(timer), (e) => { console.error(e); process.exit(1); });
