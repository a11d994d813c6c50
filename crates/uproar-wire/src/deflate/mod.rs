//! permessage-deflate (RFC 7692) without I/O: negotiation for both roles, and the compressor
//! and inflater a connection (or, without context takeover, a whole thread) uses.
//!
//! Frame rules the codec enforces when the extension is on: RSV1 only on the first frame of a
//! compressed data message; RSV1 on a control or continuation frame is a protocol error.

mod codec;
mod negotiate;

pub use codec::{Deflater, InflateError, Inflater, TAIL, effective_window_bits};
pub use negotiate::{
    Agreed, ClientBits, Declined, NAME, Offer, ResponseError, ServerPolicy, client_accepts,
    client_offer, offers,
};

#[cfg(test)]
mod tests;
