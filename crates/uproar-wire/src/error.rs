//! Protocol errors: small `Copy` values, each naming the close code that goes on the wire.

use core::fmt;

use crate::close::CloseCode;

/// Why a WebSocket connection must be failed. [`close_code`](Self::close_code) gives the code
/// to send in the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1-3 set without an extension that defines them (1002).
    ReservedBits,
    /// Opcode 3-7 or 0xB-0xF (1002).
    ReservedOpcode,
    /// A control frame with a payload over 125 bytes (1002).
    ControlFrameTooLong,
    /// A control frame without FIN (1002).
    FragmentedControlFrame,
    /// A 64-bit payload length with the most significant bit set (1002).
    LengthHighBit,
    /// A 16- or 64-bit length where a shorter encoding fits (1002).
    NonMinimalLength,
    /// A client frame without a mask, received by a server (1002).
    UnmaskedClientFrame,
    /// A masked frame received by a client (1002).
    MaskedServerFrame,
    /// A continuation frame with no message in progress (1002).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress (1002).
    ExpectedContinuation,
    /// A close frame with a 1-byte payload (1002).
    CloseFrameTooShort,
    /// A close frame with a code a peer must not send (1002).
    InvalidCloseCode,
    /// A close frame whose reason is not UTF-8 (1007).
    InvalidCloseReason,
    /// A text message that is not UTF-8, detected at the first bad byte (1007).
    InvalidUtf8,
    /// A frame longer than the configured maximum (1009).
    FrameTooLarge,
    /// A message longer than the configured maximum (1009), or a compressed one that inflates
    /// past it.
    MessageTooLarge,
    /// RSV1 (permessage-deflate's "compressed" bit) on a control frame or a continuation frame
    /// (1002, RFC 7692 section 6).
    CompressedBitMisplaced,
    /// A compressed message whose data is not valid deflate (1007: the payload is invalid; RFC
    /// 7692 only says to fail the connection).
    BadCompressedData,
}

impl ProtocolError {
    /// The close code this error sends.
    pub const fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8
            | ProtocolError::InvalidCloseReason
            | ProtocolError::BadCompressedData => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge | ProtocolError::MessageTooLarge => {
                CloseCode::MESSAGE_TOO_BIG
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason, suitable for the close frame (well under 123 bytes).
    pub const fn reason(self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode => "reserved opcode",
            ProtocolError::ControlFrameTooLong => "control frame over 125 bytes",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::LengthHighBit => "64-bit length with high bit set",
            ProtocolError::NonMinimalLength => "non-minimal length encoding",
            ProtocolError::UnmaskedClientFrame => "client frame not masked",
            ProtocolError::MaskedServerFrame => "server frame masked",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented one",
            ProtocolError::CloseFrameTooShort => "close payload of 1 byte",
            ProtocolError::InvalidCloseCode => "invalid close code",
            ProtocolError::InvalidCloseReason => "close reason not UTF-8",
            ProtocolError::InvalidUtf8 => "text not UTF-8",
            ProtocolError::FrameTooLarge => "frame too large",
            ProtocolError::MessageTooLarge => "message too large",
            ProtocolError::CompressedBitMisplaced => "RSV1 on a control or continuation frame",
            ProtocolError::BadCompressedData => "invalid compressed data",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close {})", self.reason(), self.close_code())
    }
}

impl std::error::Error for ProtocolError {}
