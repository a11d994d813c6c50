//! TLS for tests: a throwaway certificate authority made with rcgen, server certificates it
//! signs (written as PEM files, as an operator would have them), and a blocking rustls client.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use uproar_wire::handshake::random_bytes;

/// A TLS stream over TCP, blocking.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A certificate authority for one test, its certificate in `dir/ca.pem`.
pub struct TestCa {
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

/// A server certificate: its chain and key as PEM files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its files under a fresh temporary directory.
    pub fn new(name: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!(
            "uproar-tls-{name}-{}-{:x}",
            std::process::id(),
            u64::from_le_bytes(random_bytes()[..8].try_into().unwrap())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("uproar test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            dir,
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA, written
    /// as `{file}.pem` and `{file}.key`.
    pub fn server_cert(&self, file: &str, names: &[&str]) -> ServerCert {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let out = ServerCert {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&out.cert, cert.pem()).unwrap();
        std::fs::write(&out.key, key.serialize_pem()).unwrap();
        out
    }

    /// A root store holding this CA only.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let roots = self.roots();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connect over TCP and complete a TLS handshake for `name`; the TLS error if it fails.
pub fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream, std::io::Error> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let conn = ClientConnection::new(config, server_name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The certificate a TLS stream's server presented (the leaf, DER).
pub fn peer_leaf(s: &TlsStream) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate in a PEM file.
pub fn pem_leaf(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}
