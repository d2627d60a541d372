//! HTTPS without a public certificate authority: a certificate tether makes once in its data
//! folder (or one the user gives), served by rustls; the phone trusts it by pinning its SHA-256
//! fingerprint rather than by a chain, so names and dates matter little.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::{
    rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{ring as provider, WebPkiSupportedAlgorithms},
        ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
        SignatureScheme,
    },
    TlsAcceptor, TlsConnector,
};

use crate::{
    config::{Settings, TlsMode},
    datadir,
};

/// The self-signed certificate, in the data folder. Not secret: its fingerprint is what the
/// app pins.
pub const CERT_FILE: &str = "tls-cert.pem";
/// Its private key, beside it (0600).
pub const KEY_FILE: &str = "tls-key.pem";
/// How long the self-signed certificate is valid. Long: the phone pins it, and a new one
/// means pairing the phone again.
const VALIDITY: time::Duration = time::Duration::days(3650);
/// How far back its validity starts, for a phone whose clock is behind.
const BACKDATE: time::Duration = time::Duration::days(1);
/// The one application protocol served: tether's listener speaks HTTP/1 only.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The listener's TLS, and what the app pins.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// The leaf certificate's SHA-256, written as [`fingerprint`] writes it.
    pub fingerprint: String,
}

impl Tls {
    /// None with `server.tls = "off"`. With `"self-signed"` the certificate and key are made
    /// in the data folder on first start (which must exist) and read back on every later one;
    /// given files are read as they are. A key readable by other users is refused.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Tls>> {
        let (certs, key) = match &settings.server.tls {
            TlsMode::Off => return Ok(None),
            TlsMode::SelfSigned => self_signed(&settings.data_dir())?,
            TlsMode::Files { cert, key } => load(cert, key)?,
        };
        let fingerprint = fingerprint(&certs[0]);
        let config = Arc::new(server_config(certs, key)?);
        check_handshake(config.clone(), &fingerprint)?;
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(config),
            fingerprint,
        }))
    }
}

/// SHA-256 of a certificate's DER as people compare it: uppercase hex pairs joined by `:`.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the certificate the settings serve, read without making one (for the
/// commands that talk to a running server); None with TLS off.
pub fn configured_fingerprint(settings: &Settings) -> anyhow::Result<Option<String>> {
    let path: PathBuf = match &settings.server.tls {
        TlsMode::Off => return Ok(None),
        TlsMode::SelfSigned => settings.data_dir().join(CERT_FILE),
        TlsMode::Files { cert, .. } => cert.clone(),
    };
    let certs = read_certs(&path)?;
    Ok(Some(fingerprint(&certs[0])))
}

/// A client that trusts exactly the certificate with this fingerprint (as the app does).
pub fn pinned_connector(fingerprint: &str) -> TlsConnector {
    TlsConnector::from(Arc::new(pinned_client_config(fingerprint)))
}

fn pinned_client_config(fingerprint: &str) -> ClientConfig {
    client_config(Some(fingerprint.to_ascii_uppercase()))
}

/// A client that accepts the certificate with `fingerprint`, or with None any certificate (to
/// read which one the server presents); the server's handshake signature is checked always.
fn client_config(fingerprint: Option<String>) -> ClientConfig {
    let provider = Arc::new(provider::default_provider());
    let verifier = Arc::new(Pinned {
        fingerprint,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config
}

/// The fingerprint of the certificate the server at `addr` presents, whatever it is: a
/// handshake only, nothing is sent. For a command that found its own server through the data
/// folder's lock and must learn which certificate that server serves.
pub async fn presented_fingerprint(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let config = client_config(None);
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(addr.ip().into(), stream)
        .await
        .with_context(|| format!("TLS with {addr}"))?;
    let (_, connection) = tls.get_ref();
    let leaf = connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .context("the server presented no certificate")?;
    Ok(fingerprint(leaf))
}

/// The certificate and key in `dir`, made there first if there is no certificate yet.
fn self_signed(
    dir: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !cert.exists() {
        // A key without its certificate is from a first start that stopped between the two
        // writes: no phone can have pinned it.
        generate(&cert, &key)?;
        tracing::info!(path = %cert.display(), "made a self-signed TLS certificate");
    } else if !key.exists() {
        anyhow::bail!(
            "the TLS certificate {} has no key beside it ({}); remove the certificate to make \
             a new one (phones that pinned the old one must be paired again)",
            cert.display(),
            key.display()
        );
    }
    load(&cert, &key)
}

/// Writes a new self-signed certificate for this machine (ECDSA P-256) and its key (0600).
fn generate(cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = hostname().filter(|h| !names.contains(h)) {
        names.push(host);
    }
    let mut params = rcgen::CertificateParams::new(names).context("naming the certificate")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tether");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().context("making a TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("making a TLS certificate")?;
    // The key first: a certificate on disk always has its key.
    datadir::write_private(key_path, key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key_path.display()))?;
    datadir::write_private(cert_path, cert.pem().as_bytes())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}

/// This machine's name, when it can stand in a certificate (ASCII letters, digits, `-`, `.`).
fn hostname() -> Option<String> {
    #[cfg(unix)]
    let name = nix::unistd::gethostname().ok()?.into_string().ok()?;
    #[cfg(not(unix))]
    let name = std::env::var("COMPUTERNAME").ok()?;
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let usable = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    usable.then_some(name)
}

/// A PEM certificate (chain, leaf first) and its key, which must be private to its owner.
fn load(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = read_certs(cert)?;
    datadir::check_private(key)?;
    let pem =
        std::fs::read(key).with_context(|| format!("reading the TLS key {}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "reading the TLS key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found",
            key.display()
        )
    })?;
    Ok((certs, key))
}

/// The certificates of a PEM file: at least one.
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let what = || format!("reading the TLS certificate {}", path.display());
    let pem = std::fs::read(path).with_context(what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(what)?;
    if certs.is_empty() {
        anyhow::bail!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// TLS 1.3 and 1.2 with ring, no client certificates, HTTP/1.1 as the only ALPN protocol.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("choosing the TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS key cannot be used")?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// Shakes hands in memory with a client pinning `fingerprint`, so that a key that does not
/// belong to the certificate is told at start rather than by every phone that connects.
fn check_handshake(config: Arc<ServerConfig>, fingerprint: &str) -> anyhow::Result<()> {
    let mismatch = "the TLS key does not match the certificate (a handshake with it fails)";
    let mut server = ServerConnection::new(config)?;
    let mut client = ClientConnection::new(
        Arc::new(pinned_client_config(fingerprint)),
        ServerName::try_from("localhost")?,
    )?;
    // A handshake takes two round trips; a few more looks cannot hurt.
    for _ in 0..8 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes)?;
        }
        server.read_tls(&mut bytes.as_slice())?;
        server.process_new_packets().context(mismatch)?;
        bytes.clear();
        while server.wants_write() {
            server.write_tls(&mut bytes)?;
        }
        client.read_tls(&mut bytes.as_slice())?;
        client.process_new_packets().context(mismatch)?;
    }
    anyhow::bail!("{mismatch}: it did not end")
}

/// Accepts the one certificate whose fingerprint it holds (any, with None), whatever its names
/// and dates; the server's signatures are still checked against it.
#[derive(Debug)]
struct Pinned {
    fingerprint: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .fingerprint
            .as_ref()
            .is_none_or(|pinned| *pinned == fingerprint(end_entity))
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_fingerprint_is_uppercase_hex_pairs_joined_by_colons() {
        // SHA-256 of nothing.
        assert_eq!(
            fingerprint(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:\
             27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
                .replace(' ', "")
        );
    }

    #[test]
    fn the_self_signed_pair_is_made_once_its_key_private() {
        let tmp = tempfile::tempdir().unwrap();
        let (certs, _) = self_signed(tmp.path()).unwrap();
        assert_eq!(mode(&tmp.path().join(KEY_FILE)), 0o600);
        let (again, _) = self_signed(tmp.path()).unwrap();
        assert_eq!(fingerprint(&certs[0]), fingerprint(&again[0]), "reused");

        std::fs::set_permissions(
            tmp.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = self_signed(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");

        std::fs::remove_file(tmp.path().join(KEY_FILE)).unwrap();
        let err = self_signed(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("has no key beside it"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let (certs, key) = self_signed(&a).unwrap();
        let config = Arc::new(server_config(certs.clone(), key).unwrap());
        check_handshake(config, &fingerprint(&certs[0])).expect("its own key");

        let (_, other_key) = self_signed(&b).unwrap();
        let config = Arc::new(server_config(certs.clone(), other_key).unwrap());
        let err = check_handshake(config, &fingerprint(&certs[0])).unwrap_err();
        assert!(
            err.to_string().contains("does not match the certificate"),
            "{err:#}"
        );
    }
}
