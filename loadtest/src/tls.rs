//! `wss://`: TLS on the load generator's non-blocking sockets with rustls' buffered client
//! (the client's copies do not matter: it is the server that is measured).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Where the trusted CAs come from without `--ca`: the system bundle (Debian's path), or
/// `SSL_CERT_FILE`.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration: trust the CAs in `ca` (PEM), else the system bundle; or, with
/// `insecure`, any certificate (for benchmarks against self-signed servers only).
pub fn client_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let env = std::env::var("SSL_CERT_FILE").ok();
        let path = ca
            .map(Path::to_path_buf)
            .unwrap_or_else(|| env.map_or_else(|| SYSTEM_BUNDLE.into(), Into::into));
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("--ca {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("--ca {}: no certificate in it", path.display()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// A new client connection to `host` (a name or an IP address, without the port).
pub(crate) fn connect(config: &Arc<ClientConfig>, host: &str) -> io::Result<ClientConnection> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(name.to_owned()).map_err(io::Error::other)?;
    ClientConnection::new(config.clone(), name).map_err(io::Error::other)
}

/// Send what rustls has ready, until the socket would block.
pub(crate) fn flush(s: &mut impl Write, tls: &mut ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(s) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Queue plaintext (all of it: rustls buffers it until the handshake is done) and send.
pub(crate) fn write(
    s: &mut impl Write,
    tls: &mut ClientConnection,
    buf: &[u8],
) -> io::Result<usize> {
    let n = tls.writer().write(buf)?;
    flush(s, tls)?;
    Ok(n)
}

/// Read plaintext: what rustls has decrypted, else read and decrypt more; `Ok(0)` at the end.
pub(crate) fn read(
    s: &mut (impl Read + Write),
    tls: &mut ClientConnection,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if tls.read_tls(s)? == 0 {
            return Ok(0);
        }
        tls.process_new_packets().map_err(io::Error::other)?;
        // Handshake messages (and alerts) go out as they are made.
        flush(s, tls)?;
    }
}

/// `--insecure`: accept any certificate, but still check the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
