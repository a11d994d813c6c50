//! permessage-deflate in the engine: the worker's compressors and inflater (shared mode), a
//! connection's own (dedicated mode), and the counters. The codec (negotiation, RSV1 rules,
//! deflate and inflate) is `uproar_wire::deflate`.

use bytes::{Bytes, BytesMut};
use uproar_wire::deflate::{
    Agreed, Deflater, InflateError, Inflater, ServerPolicy, effective_window_bits,
};
use uproar_wire::{DataKind, FrameHead, ProtocolError};

use crate::config::{Config, Deflate};

/// zlib's memory level for compressors: 8 (its default) for the few shared ones; 1 for
/// per-connection ones, whose symbol buffers then take 1 KiB instead of 112 KiB (measured in
/// zlib-rs's allocation: docs/design/0008-permessage-deflate.md).
const SHARED_MEM_LEVEL: u8 = 8;
const DEDICATED_MEM_LEVEL: u8 = 1;

/// Inflated buffers larger than this are freed after their message instead of kept.
const KEEP: usize = 64 << 10;

/// The server's answer to offers, by mode.
pub(crate) fn policy(cfg: &Config) -> Option<ServerPolicy> {
    match cfg.deflate {
        Deflate::Off => None,
        Deflate::Shared => Some(ServerPolicy::SHARED),
        Deflate::Dedicated => Some(ServerPolicy {
            no_context_takeover: false,
            server_max_window_bits: cfg.deflate_window_bits,
            client_max_window_bits: cfg.deflate_window_bits,
        }),
    }
}

/// A worker's compression state: in shared mode a compressor per window size in use (made on
/// first use; offers may ask for windows under 15) and one inflater, all reset per message.
#[derive(Debug, Default)]
pub(crate) struct WorkerZ {
    deflaters: [Option<Deflater>; 7],
    inflater: Option<Inflater>,
    /// Where compressed payloads are built.
    pub(crate) scratch: Vec<u8>,
    /// Where inflated messages are built.
    pub(crate) inflated: Vec<u8>,
}

impl WorkerZ {
    /// The shared compressor for a connection that negotiated `window_bits`.
    pub(crate) fn deflater(&mut self, window_bits: u8, level: u8) -> &mut Deflater {
        let i = usize::from(effective_window_bits(window_bits) - 9);
        self.deflaters[i].get_or_insert_with(|| {
            Deflater::new(
                effective_window_bits(window_bits),
                SHARED_MEM_LEVEL,
                level,
                true,
            )
        })
    }

    /// The shared inflater.
    pub(crate) fn inflater(&mut self) -> &mut Inflater {
        self.inflater.get_or_insert_with(|| Inflater::new(true))
    }

    /// Give the inflated buffer back after its message.
    pub(crate) fn restore_inflated(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > KEEP {
            buf = Vec::new();
        }
        buf.clear();
        self.inflated = buf;
    }
}

/// A connection's own compression state (dedicated mode), made on first use.
#[derive(Debug)]
pub(crate) struct ConnZ {
    pub(crate) agreed: Agreed,
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
}

impl ConnZ {
    pub(crate) fn new(agreed: Agreed) -> ConnZ {
        ConnZ {
            agreed,
            deflater: None,
            inflater: None,
        }
    }

    pub(crate) fn deflater(&mut self, level: u8) -> &mut Deflater {
        let a = self.agreed;
        self.deflater.get_or_insert_with(|| {
            Deflater::new(
                a.server_max_window_bits,
                DEDICATED_MEM_LEVEL,
                level,
                a.server_no_context_takeover,
            )
        })
    }

    pub(crate) fn inflater(&mut self) -> &mut Inflater {
        let nct = self.agreed.client_no_context_takeover;
        self.inflater.get_or_insert_with(|| Inflater::new(nct))
    }
}

/// Inflate a whole compressed message with `inflater`, capped at `limit` bytes.
pub(crate) fn inflate(
    inflater: &mut Inflater,
    data: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ProtocolError> {
    inflater
        .inflate(data, out, limit)
        .and_then(|()| inflater.finish(out, limit))
        .map_err(|e| {
            inflater.reset();
            match e {
                InflateError::TooBig => ProtocolError::MessageTooLarge,
                InflateError::Corrupt => ProtocolError::BadCompressedData,
            }
        })
}

/// A whole compressed server frame (RSV1 set) around `compressed`.
pub(crate) fn compressed_frame(kind: DataKind, compressed: &[u8]) -> Bytes {
    let head = FrameHead::with_rsv(true, 0b100, kind.opcode(), compressed.len() as u64, None);
    let mut b = BytesMut::with_capacity(head.as_bytes().len() + compressed.len());
    b.extend_from_slice(head.as_bytes());
    b.extend_from_slice(compressed);
    b.freeze()
}

/// permessage-deflate counters of a worker.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ZCounts {
    /// Messages sent compressed (a shared encoding counts once per subscriber it went to).
    pub(crate) compressed: u64,
    /// Messages sent uncompressed to connections that negotiated compression (under the size
    /// threshold, or opted out).
    pub(crate) plain: u64,
    /// Payload bytes of the compressed messages before compression.
    pub(crate) bytes_before: u64,
    /// Their bytes after compression.
    pub(crate) bytes_after: u64,
    /// Received messages that failed to inflate: corrupt data.
    pub(crate) inflate_corrupt: u64,
    /// ... or more than the message limit once inflated.
    pub(crate) inflate_too_big: u64,
}

impl ZCounts {
    /// A message of `before` payload bytes went out compressed to `after`.
    pub(crate) fn count(&mut self, before: usize, after: usize) {
        self.compressed += 1;
        self.bytes_before += before as u64;
        self.bytes_after += after as u64;
    }
}
