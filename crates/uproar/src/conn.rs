//! One connection's slot: the lifecycle's state of it, and what its driver has in flight.

use uproar_wire::Connection;

use crate::timer;
use crate::tls::Tls;
use crate::tx::{Tx, TxPool};

/// The driver's handle for a connection's socket (a file descriptor on Linux). The lifecycle
/// carries it in the commands it emits and never uses it itself.
pub(crate) type Sock = i32;

/// One connection's slot.
pub(crate) struct Conn<C> {
    pub(crate) sock: Sock,
    /// The driver has a read armed that will complete again (io_uring's multishot recv): the
    /// slot is not freed until it has ended.
    pub(crate) reading: bool,
    /// The peer's FIN arrived: nothing more will be read.
    pub(crate) eof: bool,
    /// Where sending stands.
    pub(crate) out: Out,
    /// In the worker's dirty list for this turn.
    pub(crate) dirty: bool,
    /// The wheel tick this connection is armed for, or [`timer::NONE`].
    pub(crate) timer: u32,
    /// The generation of the id this slot is occupied under (set by the slab): here rather
    /// than beside the slot, where it and the slot's tag took 8 bytes of every slot.
    pub(crate) generation: u32,
    /// Outgoing bytes (plaintext under TLS); allocated only while there are some.
    pub(crate) tx: Option<Box<Tx>>,
    /// TLS state, on a TLS listener.
    pub(crate) tls: Option<Box<Tls>>,
    pub(crate) state: State<C>,
}

impl<C> crate::slab::Slotted for Conn<C> {
    fn generation(&self) -> u32 {
        self.generation
    }
    fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }
}

impl<C> Conn<C> {
    /// A connection reading its first HTTP request, to be complete by wheel tick `deadline`.
    pub(crate) fn new(sock: Sock, deadline: u32) -> Conn<C> {
        Conn {
            sock,
            reading: false,
            eof: false,
            out: Out::Idle,
            dirty: false,
            timer: timer::NONE,
            generation: 0,
            tx: None,
            tls: None,
            state: State::Http {
                held: Vec::new(),
                deadline,
            },
        }
    }

    /// The send queue, taken from the worker's pool on first use.
    pub(crate) fn tx(&mut self, pool: &mut TxPool) -> &mut Tx {
        self.tx.get_or_insert_with(|| pool.take())
    }

    /// Nothing queued and nothing with the driver.
    pub(crate) fn tx_idle(&self) -> bool {
        self.tx.as_ref().is_none_or(|t| t.is_idle())
            && self.tls.as_ref().is_none_or(|t| t.out_idle())
    }

    /// Bytes queued and not yet taken by the socket.
    pub(crate) fn buffered(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| t.buffered)
            + self
                .tls
                .as_ref()
                .and_then(|t| t.out.as_ref())
                .map_or(0, |t| t.buffered)
    }

    /// There are bytes to hand to the driver now: queued ciphertext, or (once a TLS handshake
    /// is done, and nothing encrypted is waiting) plaintext to encrypt.
    pub(crate) fn send_ready(&self) -> bool {
        let plain = self.tx.as_ref().is_some_and(|t| t.ready());
        match &self.tls {
            None => plain,
            Some(tls) => match &tls.out {
                Some(out) if !out.is_idle() => out.ready(),
                _ => plain && tls.established,
            },
        }
    }

    /// Whether the driver should keep reading from the socket.
    pub(crate) fn wants_read(&self) -> bool {
        !self.eof && !matches!(self.state, State::Dead { .. })
    }
}

/// Where a connection's sending stands (one byte: the slot stays small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Out {
    /// Nothing with the driver; a ready queue is transmitted at the next flush.
    Idle,
    /// A batch of the send queue is with the driver (under io_uring, owned by the ring).
    Sending,
    /// The socket said it is full (epoll): nothing is sent until it is writable again.
    Blocked,
}

/// Held inline (not boxed): the slot is as large as its largest state anyway, and an idle
/// WebSocket then costs one slot and no allocation.
pub(crate) enum State<C> {
    /// Reading an HTTP request (an upgrade, or plain HTTP with keep-alive). The bytes of a
    /// request that arrived in pieces are held in `held`; empty (unallocated) otherwise. The
    /// request must be complete by wheel tick `deadline`.
    Http { held: Vec<u8>, deadline: u32 },
    /// An open WebSocket.
    Ws(Ws<C>),
    /// Finishing politely: once the send queue is empty our FIN goes out; then we read (and
    /// discard) until the peer's FIN or wheel tick `deadline`, so the peer sees our last bytes
    /// rather than a reset.
    Linger { fin_sent: bool, deadline: u32 },
    /// Aborted: the socket is shut down (once `shut`, by the driver); the slot is freed when
    /// nothing is in flight.
    Dead { shut: bool },
}

pub(crate) struct Ws<C> {
    pub(crate) proto: Connection,
    pub(crate) user: C,
    /// What few connections need, behind one thin pointer so every slot stays small.
    pub(crate) extra: Option<Box<WsExtra>>,
}

/// The rarely needed part of a WebSocket's state.
#[derive(Debug, Default)]
pub(crate) struct WsExtra {
    /// The reason in the peer's close frame, if it had one.
    pub(crate) peer_reason: Option<String>,
    /// Its own compressor and inflater (permessage-deflate, dedicated mode).
    pub(crate) z: Option<crate::compress::ConnZ>,
    /// Close with this code and reason at this time (an expiring credential).
    pub(crate) close_at: Option<(std::time::Instant, uproar_wire::CloseCode, &'static str)>,
}

impl<C> State<C> {
    /// The wheel tick an HTTP request or a lingering close must be done by, or
    /// [`timer::NONE`] in the other states.
    pub(crate) fn deadline(&self) -> u32 {
        match self {
            State::Http { deadline, .. } | State::Linger { deadline, .. } => *deadline,
            State::Ws(_) | State::Dead { .. } => timer::NONE,
        }
    }
}

impl<C> Ws<C> {
    pub(crate) fn extra(&mut self) -> &mut WsExtra {
        self.extra.get_or_insert_with(Box::default)
    }
}

#[cfg(test)]
mod tests {
    /// An idle WebSocket costs one slot and no allocation: keep the slot small (the target is
    /// 0.25 KiB of RSS per idle connection, slab slot included). 192 bytes: TLS's state is one
    /// pointer (null without TLS), and the codec's assembly buffer another (a `Vec` inline
    /// took 216); the codec keeps its last input as an age (8 bytes, not a second 16-byte
    /// `Option<Instant>`); the slot's generation is a field of the connection and a free slot
    /// is `None` in a niche, so the slab adds nothing (its tag and generation beside the value
    /// took 8 bytes).
    #[test]
    fn an_idle_connection_fits_in_a_small_slot() {
        let slot = size_of::<Option<super::Conn<()>>>();
        assert_eq!(
            slot,
            size_of::<super::Conn<()>>(),
            "a free slot costs no tag"
        );
        assert!(slot <= 192, "a slot grew to {slot} bytes");
        let codec = size_of::<uproar_wire::Connection>();
        assert!(codec <= 152, "Connection grew to {codec} bytes");
    }
}
