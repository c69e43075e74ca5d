//! The control plane's TLS identity.
//!
//! Either the operator supplies a certificate and key (`--tls-cert`,
//! `--tls-key`), or the control plane keeps a private CA in its state
//! folder, made on first start, and issues itself a fresh server
//! certificate from it at every start (so new `--san` names take effect
//! without changing the CA that gateways and clients pinned).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How the control plane proves who it is.
#[derive(Debug)]
pub struct TlsIdentity {
    pub server_config: Arc<rustls::ServerConfig>,
    /// The CA file clients should pin, when the control plane made its own.
    pub ca_file: Option<PathBuf>,
}

/// Names every self-issued certificate carries, besides `--san` ones.
const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

pub fn operator_identity(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
    let certs = read_certs(cert)?;
    let key_pem = read(key)?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            path: key.to_path_buf(),
            what: "private key",
        })?;
    Ok(TlsIdentity {
        server_config: server_config(certs, key)?,
        ca_file: None,
    })
}

/// The private CA in `dir` (PEM text and key), made on first use.
fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), TlsError> {
    let ca_file = dir.join("ca.pem");
    let ca_key_file = dir.join("ca-key.pem");
    if ca_file.exists() && ca_key_file.exists() {
        let key_pem = String::from_utf8_lossy(&read(&ca_key_file)?).into_owned();
        let key = KeyPair::from_pem(&key_pem)?;
        return Ok((String::from_utf8_lossy(&read(&ca_file)?).into_owned(), key));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(
        DnType::CommonName,
        format!("hushgate private CA {}", crate::auth::random_id("")),
    );
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    statelock::write_private(&ca_key_file, key.serialize_pem().as_bytes()).map_err(|source| {
        TlsError::Write {
            path: ca_key_file.clone(),
            source,
        }
    })?;
    statelock::write_public(&ca_file, cert.pem().as_bytes()).map_err(|source| TlsError::Write {
        path: ca_file.clone(),
        source,
    })?;
    Ok((cert.pem(), key))
}

/// A server certificate for `sans` plus localhost, issued by the CA,
/// valid 397 days: (certificate PEM, key).
fn issue_leaf(
    ca_pem: &str,
    ca_key: &KeyPair,
    sans: &[String],
) -> Result<(String, KeyPair), TlsError> {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    let mut names: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for s in sans {
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "hushgate control plane");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(397);
    let cert = params.signed_by(&server_key, &issuer)?;
    Ok((cert.pem(), server_key))
}

/// Loads the private CA from `dir` (creating it on first start) and issues
/// a server certificate for `sans` plus localhost.
pub fn private_ca_identity(dir: &Path, sans: &[String]) -> Result<TlsIdentity, TlsError> {
    let (ca_pem, ca_key) = load_or_create_ca(dir)?;
    let (cert_pem, server_key) = issue_leaf(&ca_pem, &ca_key, sans)?;
    let mut chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    chain.extend(rustls_pemfile::certs(&mut ca_pem.as_bytes()).filter_map(Result::ok));
    let key = PrivateKeyDer::try_from(server_key.serialize_der()).map_err(|_| TlsError::Empty {
        path: dir.to_path_buf(),
        what: "server key",
    })?;
    Ok(TlsIdentity {
        server_config: server_config(chain, key)?,
        ca_file: Some(dir.join("ca.pem")),
    })
}

/// Where a shared certificate lives in a state folder (see `bundle`).
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// Issues a server certificate for `sans` from the CA in `dir` (made if
/// missing) and writes it there as `server.pem` (with the CA after it)
/// and `server-key.pem` (0600), for every replica to present. Returns
/// when it expires.
pub fn write_server_certificate(
    dir: &Path,
    sans: &[String],
) -> Result<time::OffsetDateTime, TlsError> {
    let (ca_pem, ca_key) = load_or_create_ca(dir)?;
    let (cert_pem, key) = issue_leaf(&ca_pem, &ca_key, sans)?;
    let key_file = dir.join(SERVER_KEY);
    statelock::write_private(&key_file, key.serialize_pem().as_bytes()).map_err(|source| {
        TlsError::Write {
            path: key_file.clone(),
            source,
        }
    })?;
    let cert_file = dir.join(SERVER_CERT);
    statelock::write_public(&cert_file, format!("{cert_pem}{ca_pem}").as_bytes()).map_err(
        |source| TlsError::Write {
            path: cert_file.clone(),
            source,
        },
    )?;
    Ok(time::OffsetDateTime::now_utc() + time::Duration::days(397))
}

/// The identity a state folder gives: with the CA's key there (or no CA
/// yet), a certificate issued at this start for `sans`; with only the
/// CA's certificate and a shared `server.pem`/`server-key.pem` (a replica
/// started from a bundle whose CA key stays elsewhere), that certificate.
pub fn state_identity(dir: &Path, sans: &[String]) -> Result<TlsIdentity, TlsError> {
    let ca = dir.join("ca.pem");
    if dir.join("ca-key.pem").exists() || !ca.exists() {
        return private_ca_identity(dir, sans);
    }
    let (cert, key) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
    if !cert.exists() || !key.exists() {
        return Err(TlsError::Empty {
            path: dir.to_path_buf(),
            what: "certificate: it has ca.pem but neither ca-key.pem (to issue one) nor server.pem and server-key.pem (a shared one); copy them from the bundle 'hushgate control init' made",
        });
    }
    let mut id = operator_identity(&cert, &key)?;
    id.ca_file = Some(ca);
    Ok(id)
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}
