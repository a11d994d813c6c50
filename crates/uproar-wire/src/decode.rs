//! Streaming frame decoder over caller-owned receive buffers.

use core::ops::Range;

use crate::error::ProtocolError;
use crate::frame::{FrameHeader, MAX_HEADER_LEN, Role};
use crate::mask;

/// A piece of one frame's payload, as a range into the buffer passed to
/// [`Decoder::decode`], already unmasked in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The frame this piece belongs to.
    pub header: FrameHeader,
    /// Where the piece is in the caller's buffer.
    pub payload: Range<usize>,
    /// First piece of this frame (the header was just decoded).
    pub first: bool,
    /// Last piece of this frame.
    pub last: bool,
}

/// Decodes frames from a byte stream delivered in buffers of any size.
///
/// A frame may be split at any byte across any number of buffers. Payload is never copied: it
/// comes back as [`Chunk`]s, ranges into the caller's buffer, unmasked in place, so a large
/// payload streams through without one contiguous buffer for the frame. A header split across
/// buffers is the one thing kept here: its first bytes (at most 13) are copied into an inline
/// array so the caller can release the buffer at once (an io_uring provided buffer, say).
#[derive(Debug, Clone)]
pub struct Decoder {
    role: Role,
    allowed_rsv: u8,
    max_frame_size: u64,
    spill: [u8; MAX_HEADER_LEN],
    spill_len: u8,
    frame: Option<InFrame>,
    failed: Option<ProtocolError>,
}

#[derive(Debug, Clone, Copy)]
struct InFrame {
    header: FrameHeader,
    remaining: u64,
    phase: u8,
    started: bool,
}

impl Decoder {
    /// A decoder for frames received by `role`, rejecting frames over `max_frame_size` bytes
    /// of payload with [`ProtocolError::FrameTooLarge`].
    pub fn new(role: Role, max_frame_size: u64) -> Decoder {
        Decoder {
            role,
            allowed_rsv: 0,
            max_frame_size,
            spill: [0; MAX_HEADER_LEN],
            spill_len: 0,
            frame: None,
            failed: None,
        }
    }

    /// Permit the RSV bits in `rsv` (low three bits, RSV1 = `0b100`), for a negotiated
    /// extension.
    pub fn set_allowed_rsv(&mut self, rsv: u8) {
        self.allowed_rsv = rsv & 0x7;
    }

    /// Whether the decoder is between frames with no partial header held.
    pub fn is_idle(&self) -> bool {
        self.frame.is_none() && self.spill_len == 0
    }

    /// Decode the next piece of payload from `buf[*pos..]`, advancing `*pos` past what was
    /// used. `Ok(None)`: everything from `*pos` was taken in (a partial header is kept), call
    /// again with the next buffer. A zero-length frame yields one empty chunk.
    ///
    /// After an error the decoder stays failed and returns the same error.
    pub fn decode(
        &mut self,
        buf: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Chunk>, ProtocolError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.decode_inner(buf, pos)
            .inspect_err(|e| self.failed = Some(*e))
    }

    #[inline]
    fn decode_inner(
        &mut self,
        buf: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Chunk>, ProtocolError> {
        let frame = match &mut self.frame {
            Some(f) => f,
            None => {
                let Some(header) = self.header(&buf[*pos..], pos)? else {
                    return Ok(None);
                };
                if header.payload_len > self.max_frame_size {
                    return Err(ProtocolError::FrameTooLarge);
                }
                // The whole payload is here (the common case for small frames): no state.
                if header.payload_len <= (buf.len() - *pos) as u64 {
                    let range = *pos..*pos + header.payload_len as usize;
                    if let Some(key) = header.mask {
                        mask::unmask(&mut buf[range.clone()], key, 0);
                    }
                    *pos = range.end;
                    return Ok(Some(Chunk {
                        header,
                        payload: range,
                        first: true,
                        last: true,
                    }));
                }
                self.frame.insert(InFrame {
                    header,
                    remaining: header.payload_len,
                    phase: 0,
                    started: false,
                })
            }
        };
        let avail = buf.len() - *pos;
        if frame.remaining > 0 && avail == 0 {
            return Ok(None);
        }
        let take = frame.remaining.min(avail as u64) as usize;
        let range = *pos..*pos + take;
        if let Some(key) = frame.header.mask {
            frame.phase =
                mask::unmask(&mut buf[range.clone()], key, usize::from(frame.phase)) as u8;
        }
        *pos += take;
        frame.remaining -= take as u64;
        let chunk = Chunk {
            header: frame.header,
            payload: range,
            first: !frame.started,
            last: frame.remaining == 0,
        };
        frame.started = true;
        if chunk.last {
            self.frame = None;
        }
        Ok(Some(chunk))
    }

    /// Parse a header from held bytes plus `avail`, advancing `*pos` by what `avail` gave.
    #[inline]
    fn header(
        &mut self,
        avail: &[u8],
        pos: &mut usize,
    ) -> Result<Option<FrameHeader>, ProtocolError> {
        if self.spill_len == 0 {
            return match FrameHeader::parse_with(avail, self.role, self.allowed_rsv)? {
                Some((h, n)) => {
                    *pos += n;
                    Ok(Some(h))
                }
                None => {
                    // Any 14 bytes hold a whole header, so `avail` is shorter than that.
                    self.spill[..avail.len()].copy_from_slice(avail);
                    self.spill_len = avail.len() as u8;
                    *pos += avail.len();
                    Ok(None)
                }
            };
        }
        let held = usize::from(self.spill_len);
        let take = (MAX_HEADER_LEN - held).min(avail.len());
        let mut tmp = self.spill;
        tmp[held..held + take].copy_from_slice(&avail[..take]);
        match FrameHeader::parse_with(&tmp[..held + take], self.role, self.allowed_rsv)? {
            Some((h, n)) => {
                // The held bytes alone were not a header, so `n > held`.
                self.spill_len = 0;
                *pos += n - held;
                Ok(Some(h))
            }
            None => {
                self.spill = tmp;
                self.spill_len = (held + take) as u8;
                *pos += take;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{OpCode, encode_frame};

    /// Two masked frames (one with a 16-bit length) fed in two buffers cut at every point:
    /// pieces come back in order with the right flags, unmasked, covering every payload byte.
    #[test]
    fn chunks_at_every_split() {
        let a: Vec<u8> = (0..200u8).collect();
        let mut input = Vec::new();
        encode_frame(&mut input, false, OpCode::Binary, &a, Some([1, 2, 3, 4]));
        encode_frame(
            &mut input,
            true,
            OpCode::Continuation,
            b"xyz",
            Some([9, 9, 9, 9]),
        );
        for cut in 0..=input.len() {
            let mut d = Decoder::new(Role::Server, 1 << 20);
            let mut got: Vec<(OpCode, Vec<u8>, bool, bool)> = Vec::new();
            for piece in [&input[..cut], &input[cut..]] {
                let mut buf = piece.to_vec();
                let mut pos = 0;
                while let Some(c) = d.decode(&mut buf, &mut pos).unwrap() {
                    assert!(c.payload.end <= buf.len() && c.payload.start <= c.payload.end);
                    got.push((c.header.opcode, buf[c.payload].to_vec(), c.first, c.last));
                }
                assert_eq!(pos, buf.len());
            }
            assert!(d.is_idle());
            let join = |op| -> Vec<u8> {
                got.iter()
                    .filter(|g| g.0 == op)
                    .flat_map(|g| g.1.clone())
                    .collect()
            };
            assert_eq!(join(OpCode::Binary), a, "cut {cut}");
            assert_eq!(join(OpCode::Continuation), b"xyz", "cut {cut}");
            for op in [OpCode::Binary, OpCode::Continuation] {
                let mine: Vec<_> = got.iter().filter(|g| g.0 == op).collect();
                assert!(
                    mine.first().unwrap().2 && mine.last().unwrap().3,
                    "cut {cut}"
                );
                assert!(mine.iter().skip(1).all(|g| !g.2), "cut {cut}");
                assert!(mine.iter().rev().skip(1).all(|g| !g.3), "cut {cut}");
            }
        }
    }

    #[test]
    fn a_failed_decoder_stays_failed() {
        let mut d = Decoder::new(Role::Server, 10);
        let mut buf = [0x82, 0x8B, 1, 2, 3, 4];
        let mut pos = 0;
        assert_eq!(
            d.decode(&mut buf, &mut pos),
            Err(ProtocolError::FrameTooLarge)
        );
        let mut buf = [0x82, 0x80, 1, 2, 3, 4];
        let mut pos = 0;
        assert_eq!(
            d.decode(&mut buf, &mut pos),
            Err(ProtocolError::FrameTooLarge)
        );
    }
}
