//! TLS (`https://` and `wss://`) in user space with rustls, between the driver's bytes and the
//! lifecycle, so it works the same on both drivers.
//!
//! rustls' unbuffered API keeps every buffer ours: received records are decrypted in place in
//! the receive buffer (io_uring's pooled buffer, epoll's shared one); only the bytes of a
//! record that continues in the next receive are copied, into a per-connection buffer that is
//! allocated then and freed once it is consumed. Outgoing frames stay plaintext in the send
//! queue (so a slow consumer's backlog can still be dropped whole frames at a time) and are
//! encrypted just before the socket takes them, into the connection's own ciphertext queue,
//! which is released when drained. A fan-out frame shared by reference is thus encrypted once
//! per subscriber, as it must be: each connection has its own keys. An idle TLS connection
//! holds its rustls state (keys) and no buffer.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use bytes::Bytes;

use crate::tx::Tx;

/// A TLS server configuration: certificates (several, chosen by SNI), TLS 1.3 and 1.2 with
/// AEAD suites only (rustls has no others), ALPN `http/1.1`. Cheap to clone.
///
/// Built from PEM files ([`from_pem_files`](Self::from_pem_files)), PEM bytes, or an
/// embedder's own rustls configuration ([`from_rustls`](Self::from_rustls)). A running
/// server takes a new one with [`Handle::reload_tls`](crate::Handle::reload_tls): new
/// handshakes use it, open connections keep theirs.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.server.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// Why a TLS configuration could not be built; the message names the file and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider: ring. Why: it builds with a C compiler alone (aws-lc-rs needs cmake or
/// a prebuilt library on these machines) and its AES-GCM and ChaCha20-Poly1305 are the
/// assembly of BoringSSL, as fast per byte as aws-lc's on x86-64 (docs/design/0009-tls.md).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// One certificate chain and its private key, from PEM files (the chain leaf first, as
    /// certbot writes `fullchain.pem`; the key in PKCS#8, PKCS#1 or SEC1 form).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        TlsConfig::from_pem_file_pairs(&[(cert, key)])
    }

    /// Several certificates, each chain with its key, from PEM files. A handshake that names a
    /// host (SNI) gets the first certificate valid for it; one that names none, or a name no
    /// certificate covers, gets the first (the default, as nginx's default server).
    pub fn from_pem_file_pairs(pairs: &[(&Path, &Path)]) -> Result<TlsConfig, TlsError> {
        let mut pems = Vec::new();
        for (cert, key) in pairs {
            let read = |p: &Path| {
                std::fs::read(p).map_err(|e| TlsError(format!("reading {}: {e}", p.display())))
            };
            pems.push((read(cert)?, read(key)?, cert.display().to_string()));
        }
        let refs: Vec<(&[u8], &[u8], &str)> = pems
            .iter()
            .map(|(c, k, n)| (&c[..], &k[..], n.as_str()))
            .collect();
        TlsConfig::from_pem_list(&refs)
    }

    /// One certificate chain and key from PEM bytes.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<TlsConfig, TlsError> {
        TlsConfig::from_pem_list(&[(cert_chain, key, "the certificate")])
    }

    fn from_pem_list(pairs: &[(&[u8], &[u8], &str)]) -> Result<TlsConfig, TlsError> {
        let provider = provider();
        let mut keys = Vec::new();
        for &(cert, key, name) in pairs {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError(format!("{name}: bad PEM: {e}")))?;
            if chain.is_empty() {
                return Err(TlsError(format!("{name}: no CERTIFICATE in the PEM")));
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| TlsError(format!("the key of {name}: {e}")))?;
            let signing = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError(format!("the key of {name}: {e}")))?;
            let ck = CertifiedKey::new(chain, signing);
            ck.keys_match()
                .map_err(|e| TlsError(format!("the key of {name} does not match it: {e}")))?;
            keys.push(Arc::new(ck));
        }
        if keys.is_empty() {
            return Err(TlsError("no certificate given".into()));
        }
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError(format!("TLS versions: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { keys }));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            server: Arc::new(server),
        })
    }

    /// An embedder's own rustls configuration (client certificates, another provider, session
    /// tickets). Its ALPN list should offer `http/1.1`, or be empty.
    pub fn from_rustls(server: Arc<rustls::ServerConfig>) -> TlsConfig {
        TlsConfig { server }
    }
}

/// Certificates chosen by the name in the ClientHello (SNI), the first as the default.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            self.keys.iter().find(|k| {
                k.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        by_name.or(self.keys.first()).cloned()
    }
}

/// The configuration new connections get; replaced by a reload.
#[derive(Debug)]
pub(crate) struct TlsSource {
    current: RwLock<TlsConfig>,
}

impl TlsSource {
    pub(crate) fn new(config: TlsConfig) -> TlsSource {
        TlsSource {
            current: RwLock::new(config),
        }
    }

    pub(crate) fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .server
            .clone()
    }

    pub(crate) fn set(&self, config: TlsConfig) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// Most bytes held for a record or handshake message that continues in the next receive; why
/// 80 KiB: rustls joins handshake messages of up to 64 KiB and a record is at most 16 KiB
/// plus its overhead, so a peer can make us hold no more.
const MAX_HELD: usize = 80 * 1024;

/// Per record of ciphertext, the most bytes encryption adds (TLS 1.2 AES-GCM: 5 header, 8
/// explicit nonce, 16 tag; TLS 1.3: 5 header, 1 content type, 16 tag), with room to spare.
const RECORD_OVERHEAD: usize = 64;
/// Largest plaintext per record.
const MAX_FRAGMENT: usize = 16 * 1024;

/// Why a TLS connection failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The peer broke the protocol (or sent garbage, or a record too large), or a handshake
    /// failed (no shared version or suite, a bad certificate request).
    Protocol(rustls::Error),
    /// The peer made us hold more than [`MAX_HELD`] bytes of an unfinished record.
    TooMuchHeld,
    /// Encryption failed (the key's record limit).
    Encrypt,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Protocol(e) => write!(f, "{e}"),
            Failure::TooMuchHeld => f.write_str("an unfinished record over the limit"),
            Failure::Encrypt => f.write_str("encryption failed"),
        }
    }
}

/// One connection's TLS state.
pub(crate) struct Tls {
    conn: UnbufferedServerConnection,
    /// Received bytes rustls has not consumed yet (the start of a record, or of a handshake
    /// message, that continues in the next receive). Empty and unallocated otherwise.
    held: Vec<u8>,
    /// Ciphertext to send, in order: handshake flights, encrypted frames, alerts; allocated
    /// only while there is some.
    pub(crate) out: Option<Box<Tx>>,
    /// Nothing received yet (so a plain-HTTP request can be told apart from a ClientHello).
    pub(crate) fresh: bool,
    /// The handshake is done: application data flows.
    pub(crate) established: bool,
    /// Our close_notify is queued (or no TLS close is owed: the peer spoke plain HTTP).
    pub(crate) notify_sent: bool,
}

/// What a receive produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// The handshake completed during this receive.
    pub(crate) established_now: bool,
    /// The peer sent its close_notify: it will send no more.
    pub(crate) peer_closed: bool,
}

impl Tls {
    pub(crate) fn new(config: Arc<rustls::ServerConfig>) -> Result<Tls, rustls::Error> {
        Ok(Tls {
            conn: UnbufferedServerConnection::new(config)?,
            held: Vec::new(),
            out: None,
            fresh: true,
            established: false,
            notify_sent: false,
        })
    }

    /// Whether the first bytes of a connection are a plain-HTTP request (an ASCII method)
    /// rather than a TLS record (which starts with content type 22, a handshake).
    pub(crate) fn looks_like_http(first: &[u8]) -> bool {
        first.first().is_some_and(u8::is_ascii_uppercase)
    }

    /// Queue bytes to go out as they are (a plain-HTTP answer to a plain-HTTP request).
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.out
            .get_or_insert_with(Box::default)
            .push_copy(bytes, &[]);
    }

    /// Decrypt what arrived: application data is appended to `plain`; handshake records to
    /// send are queued in [`out`](Self::out).
    pub(crate) fn receive(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, Failure> {
        self.fresh = false;
        let was_established = self.established;
        let Tls {
            conn,
            held,
            out,
            established,
            ..
        } = self;
        // Decrypt in place in the receive buffer unless an earlier piece is held.
        let from_held = !held.is_empty();
        if from_held {
            held.extend_from_slice(buf);
        }
        let input: &mut [u8] = if from_held { held } else { buf };
        let mut used = 0;
        let mut got = Received::default();
        let result = loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut input[used..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => break Err(Failure::Protocol(e)),
            };
            let go_on = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => plain.extend_from_slice(rec.payload),
                            Err(e) => return Err(Failure::Protocol(e)),
                        }
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, out);
                    true
                }
                ConnectionState::TransmitTlsData(t) => {
                    // What it asks to transmit is already in `out`, sent at the next flush.
                    t.done();
                    true
                }
                ConnectionState::PeerClosed => {
                    got.peer_closed = true;
                    true
                }
                ConnectionState::WriteTraffic(_) => {
                    *established = true;
                    false
                }
                // Waiting for more of the handshake; closed; early data (not enabled).
                _ => false,
            };
            used += discard;
            if !go_on {
                break Ok(());
            }
        };
        result?;
        // Keep what is not consumed (an unfinished record), bounded.
        let rest = input.len() - used;
        let _ = input;
        if rest > MAX_HELD {
            return Err(Failure::TooMuchHeld);
        }
        if from_held {
            held.drain(..used);
            if held.is_empty() {
                *held = Vec::new();
            }
        } else if rest > 0 {
            held.extend_from_slice(&buf[used..]);
        }
        got.established_now = !was_established && self.established;
        Ok(got)
    }

    /// Encrypt application data into [`out`](Self::out). Only once established.
    pub(crate) fn encrypt(&mut self, data: &[u8]) -> Result<(), Failure> {
        let Tls { conn, out, .. } = self;
        loop {
            let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
            match state.map_err(Failure::Protocol)? {
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, out),
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::WriteTraffic(mut w) => {
                    let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
                    let mut room = data.len() + records * RECORD_OVERHEAD;
                    let out = out.get_or_insert_with(Box::default);
                    loop {
                        match out.push_with(room, |b| w.encrypt(data, b)) {
                            Ok(_) => return Ok(()),
                            Err(EncryptError::InsufficientSize(s)) => room = s.required_size,
                            Err(_) => return Err(Failure::Encrypt),
                        }
                    }
                }
                // Not established, or closed: nothing can be sent.
                _ => return Err(Failure::Encrypt),
            }
        }
    }

    /// Queue our close_notify (once).
    pub(crate) fn close_notify(&mut self) {
        if std::mem::replace(&mut self.notify_sent, true) || !self.established {
            return;
        }
        let Tls { conn, out, .. } = self;
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
            let out = out.get_or_insert_with(Box::default);
            let _ = out.push_with(RECORD_OVERHEAD, |b| w.queue_close_notify(b));
        }
    }

    /// Ciphertext is queued or with the driver.
    pub(crate) fn out_idle(&self) -> bool {
        self.out.as_ref().is_none_or(|t| t.is_idle())
    }
}

/// A worker's TLS scratch buffers and counters.
#[derive(Debug, Default)]
pub(crate) struct WorkerTls {
    /// Plaintext decrypted from one receive.
    pub(crate) plain: Vec<u8>,
    /// Plaintext chunks taken from a send queue to be encrypted.
    pub(crate) chunks: Vec<Bytes>,
    /// Small chunks joined into one record.
    pub(crate) joined: Vec<u8>,
    pub(crate) counts: TlsCounts,
}

/// What the worker counts about TLS.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TlsCounts {
    /// Handshakes completed.
    pub(crate) handshakes: u64,
    /// Connections that failed before the handshake completed (garbage, no common version or
    /// suite, a handshake over the size limit).
    pub(crate) handshake_failures: u64,
    /// Connections that failed after it (a bad record, a record too large, a failed
    /// decryption).
    pub(crate) errors: u64,
    /// Plain-HTTP requests to the TLS port (answered 400 in plain text, closed).
    pub(crate) plain_http: u64,
}

impl Tls {
    /// Encrypt plaintext chunks in order, joining small ones into records of up to 16 KiB so
    /// a burst of small frames costs few records; `joined` is scratch.
    pub(crate) fn encrypt_chunks(
        &mut self,
        chunks: &[Bytes],
        joined: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        joined.clear();
        for c in chunks {
            if joined.len() + c.len() > MAX_FRAGMENT && !joined.is_empty() {
                self.encrypt(joined)?;
                joined.clear();
            }
            if c.len() >= MAX_FRAGMENT {
                self.encrypt(c)?;
            } else {
                joined.extend_from_slice(c);
            }
        }
        if !joined.is_empty() {
            self.encrypt(joined)?;
        }
        joined.clear();
        if joined.capacity() > 4 * MAX_FRAGMENT {
            *joined = Vec::new();
        }
        Ok(())
    }
}

/// Move a handshake record rustls made into `out`.
fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Option<Box<Tx>>,
) {
    let out = out.get_or_insert_with(Box::default);
    let mut room = 4096;
    loop {
        match out.push_with(room, |b| e.encode(b)) {
            Ok(_) | Err(EncodeError::AlreadyEncoded) => return,
            Err(EncodeError::InsufficientSize(s)) => room = s.required_size,
        }
    }
}
