//! Frame headers (RFC 6455 §5.2): parse from borrowed bytes, encode into a small array.

use crate::error::ProtocolError;
use crate::mask;

/// Which end of the connection this endpoint is. Decides which frames must be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Receives unmasked frames, sends masked ones.
    Client,
}

/// Frame opcodes; 3-7 and 0xB-0xF are reserved and rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation = 0x0,
    /// 0x1: UTF-8 text.
    Text = 0x1,
    /// 0x2: binary data.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` if it is reserved.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong.
    #[inline]
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Bit `n` set when opcode `n` is defined: 0, 1, 2, 8, 9, 10.
const VALID_OPCODES: u16 = 0b0000_0111_0000_0111;

/// Opcode by value; reserved values map to `Continuation` but are rejected before lookup.
const OPCODE_TABLE: [OpCode; 16] = {
    let mut t = [OpCode::Continuation; 16];
    let mut i = 0;
    while i < 16 {
        if let Some(op) = OpCode::from_u8(i as u8) {
            t[i] = op;
        }
        i += 1;
    }
    t
};

/// Which rule the first two header bytes broke (the hot path only knows that one did).
#[cold]
fn first_byte_error(b0: u8, b1: u8, role: Role, allowed_rsv: u8) -> ProtocolError {
    let op = b0 & 0xF;
    if ((b0 >> 4) & 0x7 & !allowed_rsv) != 0 {
        ProtocolError::ReservedBits
    } else if OpCode::from_u8(op).is_none() {
        ProtocolError::ReservedOpcode
    } else if op & 0x8 != 0 && b0 & 0x80 == 0 {
        ProtocolError::FragmentedControlFrame
    } else if op & 0x8 != 0 && (b1 & 0x7F) > 125 {
        ProtocolError::ControlFrameTooLong
    } else if role == Role::Server {
        ProtocolError::UnmaskedClientFrame
    } else {
        ProtocolError::MaskedServerFrame
    }
}

/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parse a header from the start of `buf`, as received by `role`, with no extension bits
    /// allowed. `Ok(None)` means more bytes are needed; nothing is consumed then. On success
    /// returns the header and its length in bytes.
    ///
    /// Errors are reported as soon as the offending byte is present: an invalid first two
    /// bytes fail even if the rest of the header has not arrived.
    #[inline]
    pub fn parse(buf: &[u8], role: Role) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        Self::parse_with(buf, role, 0)
    }

    /// [`parse`](Self::parse) with the RSV bits in `allowed_rsv` permitted (for negotiated
    /// extensions such as permessage-deflate, which uses RSV1 = `0b100`).
    #[inline]
    pub fn parse_with(
        buf: &[u8],
        role: Role,
        allowed_rsv: u8,
    ) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        // One test for every rule the first two bytes can break; the cold path says which.
        let op = b0 & 0xF;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let is_control = op & 0x8 != 0;
        let bad = (((b0 >> 4) & 0x7 & !allowed_rsv) != 0)
            | ((VALID_OPCODES >> op) & 1 == 0)
            | (is_control & ((b0 & 0x80 == 0) | (len7 > 125)))
            | (masked != (role == Role::Server));
        if bad {
            return Err(first_byte_error(b0, b1, role, allowed_rsv));
        }
        // `op` passed the VALID_OPCODES test, so the table entry is its opcode.
        let opcode = OPCODE_TABLE[usize::from(op)];
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        if len7 < 126 {
            // The common case: one bounds check for the whole header. `masked` was checked
            // against the role above, so the role decides the shape.
            let payload_len = u64::from(len7);
            return Ok(match role {
                Role::Server => match buf.first_chunk::<6>() {
                    Some(&[_, _, k0, k1, k2, k3]) => {
                        let mask = Some([k0, k1, k2, k3]);
                        Some((
                            FrameHeader {
                                fin,
                                rsv,
                                opcode,
                                mask,
                                payload_len,
                            },
                            6,
                        ))
                    }
                    None => None,
                },
                Role::Client => Some((
                    FrameHeader {
                        fin,
                        rsv,
                        opcode,
                        mask: None,
                        payload_len,
                    },
                    2,
                )),
            });
        }
        let (payload_len, n) = if len7 == 126 {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            let v = u16::from_be_bytes([b[0], b[1]]);
            if v < 126 {
                return Err(ProtocolError::NonMinimalLength);
            }
            (u64::from(v), 4)
        } else {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let v = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if v >> 63 != 0 {
                return Err(ProtocolError::LengthHighBit);
            }
            if v <= 0xFFFF {
                return Err(ProtocolError::NonMinimalLength);
            }
            (v, 10)
        };
        let header = |mask| FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        if !masked {
            return Ok(Some((header(None), n)));
        }
        match buf.get(n..n + 4) {
            Some(&[k0, k1, k2, k3]) => Ok(Some((header(Some([k0, k1, k2, k3])), n + 4))),
            _ => Ok(None),
        }
    }

    /// The encoded form of this header.
    pub fn encode(&self) -> FrameHead {
        FrameHead::with_rsv(self.fin, self.rsv, self.opcode, self.payload_len, self.mask)
    }
}

/// An encoded frame header held inline (at most 14 bytes), so a payload can be sent after it
/// without copying: `[head.as_bytes(), payload]` as two iovecs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl FrameHead {
    /// Encode a header with no RSV bits. With `mask`, the frame is masked (client role) and the
    /// caller must mask the payload with the same key ([`mask::unmask`] with phase 0).
    #[inline]
    pub fn new(fin: bool, opcode: OpCode, payload_len: u64, mask: Option<[u8; 4]>) -> FrameHead {
        Self::with_rsv(fin, 0, opcode, payload_len, mask)
    }

    /// Encode a header with RSV bits (low three bits of `rsv`, RSV1 = `0b100`).
    #[inline]
    pub fn with_rsv(
        fin: bool,
        rsv: u8,
        opcode: OpCode,
        payload_len: u64,
        mask: Option<[u8; 4]>,
    ) -> FrameHead {
        let mut buf = [0u8; MAX_HEADER_LEN];
        buf[0] = (u8::from(fin) << 7) | ((rsv & 0x7) << 4) | opcode as u8;
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let mut n = if payload_len < 126 {
            buf[1] = mask_bit | payload_len as u8;
            2
        } else if payload_len <= 0xFFFF {
            buf[1] = mask_bit | 126;
            buf[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        } else {
            buf[1] = mask_bit | 127;
            buf[2..10].copy_from_slice(&payload_len.to_be_bytes());
            10
        };
        if let Some(k) = mask {
            buf[n..n + 4].copy_from_slice(&k);
            n += 4;
        }
        FrameHead { buf, len: n as u8 }
    }

    /// The header bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl core::fmt::Debug for FrameHead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("FrameHead").field(&self.as_bytes()).finish()
    }
}

/// Append one complete frame to `out`; with `mask`, the payload is masked as a client must.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    out.extend_from_slice(FrameHead::new(fin, opcode, payload.len() as u64, mask).as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        mask::unmask(&mut out[start..], k, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_all_length_classes() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let head = FrameHead::new(true, OpCode::Binary, len, mask);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let (h, n) = FrameHeader::parse(head.as_bytes(), role).unwrap().unwrap();
                assert_eq!(n, head.as_bytes().len());
                assert_eq!(h.payload_len, len);
                assert_eq!(h.mask, mask);
                assert!(h.fin);
                assert_eq!(h.encode(), head);
                // Every strict prefix is incomplete, never an error.
                for cut in 0..n {
                    assert_eq!(FrameHeader::parse(&head.as_bytes()[..cut], role), Ok(None));
                }
            }
        }
    }

    #[test]
    fn opcodes() {
        for v in 0..16u8 {
            let op = OpCode::from_u8(v);
            assert_eq!(op.is_some(), matches!(v, 0 | 1 | 2 | 8 | 9 | 10), "{v}");
            if let Some(op) = op {
                assert_eq!(op as u8, v);
                assert_eq!(op.is_control(), v >= 8);
            }
        }
    }
}
