//! Compressing and inflating messages for permessage-deflate (RFC 7692 section 7.2), on
//! zlib-rs's safe API: raw deflate, no zlib header.

use zlib_rs::{DeflateConfig, DeflateFlush, InflateFlush, Status};

/// What a sync flush leaves at the end of the output, removed by the sender and supplied by
/// the receiver (RFC 7692 7.2.1 and 7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output grows by at most this much per call into zlib; why 16 KiB: small messages take one
/// step, a large one does not zero a large buffer in advance.
const STEP: usize = 16 << 10;

/// The window a compressor really uses for a negotiated `window_bits`. zlib (and zlib-rs)
/// cannot make a raw deflate stream with an 8-bit window; with 9 bits its matches reach at
/// most 512 - 262 = 250 bytes back (the window minus the minimum lookahead), so every stream
/// it makes is valid for an 8-bit (256-byte) window too: `server_max_window_bits=8` is
/// honoured by compressing with 9 (tested against an inflater with an 8-bit window).
pub fn effective_window_bits(window_bits: u8) -> u8 {
    window_bits.clamp(9, 15)
}

/// A permessage-deflate compressor: one message in, its compressed payload out.
pub struct Deflater {
    z: zlib_rs::Deflate,
    no_context_takeover: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("no_context_takeover", &self.no_context_takeover)
            .finish()
    }
}

impl Deflater {
    /// A compressor with an LZ77 window of `window_bits` (8-15; 8 compresses with 9, see
    /// [`effective_window_bits`]), zlib's `mem_level` (1-9: the size of its symbol buffers),
    /// `level` (0-9), resetting after every message if `no_context_takeover`.
    pub fn new(window_bits: u8, mem_level: u8, level: u8, no_context_takeover: bool) -> Deflater {
        let config = DeflateConfig {
            level: i32::from(level.min(9)),
            window_bits: -i32::from(effective_window_bits(window_bits)),
            mem_level: i32::from(mem_level.clamp(1, 9)),
            ..DeflateConfig::default()
        };
        Deflater {
            z: zlib_rs::Deflate::new_with_config(config),
            no_context_takeover,
        }
    }

    /// Append `input` compressed to `out`: deflate with a sync flush, the [`TAIL`] removed.
    /// Under context takeover the message stays in the window, so the peer's inflater must
    /// see it: never send a message fed to this compressor uncompressed.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut pos = 0;
        loop {
            let len = out.len();
            let room = ((input.len() - pos) / 2 + 64).min(STEP);
            out.resize(len + room, 0);
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self
                .z
                .compress(&input[pos..], &mut out[len..], DeflateFlush::SyncFlush);
            let used = (self.z.total_in() - in0) as usize;
            let made = (self.z.total_out() - out0) as usize;
            out.truncate(len + made);
            pos += used;
            // A sync flush is complete when the input is used up and the output was not full.
            let done = pos == input.len() && made < room;
            match r {
                Ok(_) if done => break,
                Ok(_) => {}
                // Only a misuse of the stream (never here) can fail; a bug is better loud.
                Err(e) => panic!("deflate failed: {e:?}"),
            }
        }
        debug_assert!(
            out[start..].ends_with(&TAIL),
            "a sync flush ends with 00 00 ff ff"
        );
        out.truncate(out.len() - TAIL.len());
        if self.no_context_takeover {
            self.z.reset();
        }
    }

    /// Forget the window (before the next message, under no context takeover; done by
    /// [`compress`](Self::compress) itself when so configured).
    pub fn reset(&mut self) {
        self.z.reset();
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The message inflates past the caller's limit (close 1009).
    TooBig,
    /// The data is not valid deflate (close 1007: RFC 7692 leaves the code to the endpoint;
    /// it is invalid payload data, as Autobahn 13.x expects a failure, not a hang).
    Corrupt,
}

/// A permessage-deflate inflater: a compressed message arrives in pieces (frames, receive
/// buffers), its output is capped as it grows.
pub struct Inflater {
    z: zlib_rs::Inflate,
    no_context_takeover: bool,
    /// The current message's deflate stream ended with a final (BFINAL=1) block.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("no_context_takeover", &self.no_context_takeover)
            .finish()
    }
}

impl Inflater {
    /// An inflater; its window is always 15 bits (32 KiB, what zlib-rs allocates whatever the
    /// size asked), which decodes a stream made with any smaller window.
    pub fn new(no_context_takeover: bool) -> Inflater {
        Inflater {
            z: zlib_rs::Inflate::new(false, 15),
            no_context_takeover,
            ended: false,
        }
    }

    /// Inflate the next piece of a compressed message, appending to `out`, which is never
    /// let grow past `limit` bytes (the message limit: past it, [`InflateError::TooBig`]
    /// with `out` at most `limit + 1` long).
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        let mut pos = 0;
        while !self.ended {
            let len = out.len();
            let room = (limit + 1).saturating_sub(len).min(STEP);
            if room == 0 {
                return Err(InflateError::TooBig);
            }
            out.resize(len + room, 0);
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self
                .z
                .decompress(&input[pos..], &mut out[len..], InflateFlush::SyncFlush);
            let used = (self.z.total_in() - in0) as usize;
            let made = (self.z.total_out() - out0) as usize;
            out.truncate(len + made);
            pos += used;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            match r {
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(_) if made < room && (pos == input.len() || used == 0) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(InflateError::Corrupt),
            }
        }
        // After a final block the sender starts a new stream with the next message; whatever
        // follows in this one (the tail we add) is ignored.
        Ok(())
    }

    /// The message's last piece has been given: supply the [`TAIL`] and get ready for the
    /// next message.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let r = self.inflate(&TAIL, out, limit);
        if self.no_context_takeover || self.ended || r.is_err() {
            self.reset();
        }
        r
    }

    /// Forget the window and any message in progress.
    pub fn reset(&mut self) {
        self.z.reset(false);
        self.ended = false;
    }
}
