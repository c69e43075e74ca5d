//! HTTPS client for the hushgate control plane.
//!
//! Gateways, the client shim and `hushgate admin` all talk to the control
//! plane through this crate, so they share one idea of trust and one set of
//! readable errors. Trust is either a pinned CA file (a self-hosted control
//! plane that made its own CA) or the public web PKI roots; there is no way
//! to switch verification off. Answers are read with a size cap so that a
//! hostile or broken server cannot make a client buffer without bound.
//!
//! A client may be given several URLs (control plane replicas sharing one
//! database), separated by commas: it uses one until a connection to it
//! cannot be made, then the next. Only a failure to connect moves it: the
//! request was never sent, so repeating it elsewhere (even a POST) cannot
//! do anything twice. Clones share which replica is in use.
#![forbid(unsafe_code)]

use proto::api::ErrorBody;
/// The HTTP method of [`ControlClient::call`].
pub use reqwest::Method;
use reqwest::StatusCode;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod calls;

/// Which certificates the client accepts for the control plane.
#[derive(Clone)]
pub enum Trust {
    /// Only certificates issued by this CA (PEM, one or more certificates).
    PinnedCa(Vec<CertificateDer<'static>>),
    /// The public web PKI (Mozilla's roots, built in).
    PublicRoots,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::PinnedCa(c) => write!(f, "PinnedCa({} certificates)", c.len()),
            Trust::PublicRoots => f.write_str("PublicRoots"),
        }
    }
}

impl Trust {
    /// Reads a PEM file of CA certificates to pin.
    pub fn from_ca_file(path: &Path) -> Result<Trust, ClientError> {
        let pem = std::fs::read(path).map_err(|e| ClientError::Config(format!(
            "cannot read the CA file {}: {e}; pass the ca.pem that the control plane printed at its first start",
            path.display()
        )))?;
        Self::from_ca_pem(&pem)
            .map_err(|e| ClientError::Config(format!("the CA file {} {e}", path.display())))
    }

    pub fn from_ca_pem(pem: &[u8]) -> Result<Trust, String> {
        let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err("holds no certificate (expected a PEM 'CERTIFICATE' block)".into());
        }
        Ok(Trust::PinnedCa(certs))
    }
}

/// Everything that can go wrong talking to the control plane, each with a
/// message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("the control plane at {url} presented a certificate that is not trusted ({detail}); pass the CA file it printed at first start with --ca, or check the URL")]
    CertificateNotTrusted { url: String, detail: String },
    /// The certificate is trusted but does not name the host in the URL:
    /// the control plane was started without that name.
    #[error("the control plane at {url} presented a certificate that is not valid for the name '{host}' ({detail}); on the control plane's host, add '--san {host}' to 'hushgate control' and restart it (clients keep the same ca.pem), or use a URL with a name its certificate covers")]
    CertificateWrongName {
        url: String,
        host: String,
        detail: String,
    },
    #[error("cannot reach the control plane at {url}: {detail}; is it running and is the address right?")]
    Unreachable { url: String, detail: String },
    #[error("{message} ({status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the control plane sent an answer that could not be understood: {0}")]
    BadAnswer(String),
}

impl ClientError {
    /// The API error code, if the control plane answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one control plane (or to the first of its replicas
/// that can be reached). Cheap to clone.
#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    /// Every replica's base URL, in the order given.
    bases: Arc<[String]>,
    /// The one in use, shared by clones: a gateway's feed and its reports
    /// move together.
    current: Arc<AtomicUsize>,
    bearer: Option<Arc<str>>,
    /// Largest answer body read, in bytes.
    max_body: usize,
}

impl std::fmt::Debug for ControlClient {
    // The bearer token never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("bases", &self.bases)
            .field("bearer", &self.bearer.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
}

impl ControlClient {
    /// `base` is the control plane's URL, e.g. `https://control.example:8443`,
    /// or several replicas' URLs separated by commas (tried in turn when
    /// one cannot be reached). Only `https://` is accepted.
    pub fn new(base: &str, trust: Trust) -> Result<ControlClient, ClientError> {
        Self::build(base, trust, None)
    }

    /// The same, with connections made from the local address `local`
    /// (a host with several addresses choosing the one the control plane
    /// sees, and tests playing several clients on loopback).
    pub fn new_from(base: &str, trust: Trust, local: IpAddr) -> Result<ControlClient, ClientError> {
        Self::build(base, trust, Some(local))
    }

    fn build(
        base: &str,
        trust: Trust,
        local: Option<IpAddr>,
    ) -> Result<ControlClient, ClientError> {
        let bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::Config(
                "no control plane URL given (e.g. https://control.example:8443)".into(),
            ));
        }
        for base in &bases {
            if !base.starts_with("https://") {
                return Err(ClientError::Config(format!(
                    "the control plane URL must start with https:// (got '{base}'); hushgate has no plaintext mode"
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &trust {
            Trust::PinnedCa(certs) => {
                for c in certs {
                    roots.add(c.clone()).map_err(|e| {
                        ClientError::Config(format!("the CA certificate cannot be used: {e}"))
                    })?;
                }
            }
            Trust::PublicRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(5))
            .local_address(local)
            // Below the control plane's idle timeout (10 s by default), so
            // a pooled connection is rarely picked just as it is closed.
            .pool_idle_timeout(Duration::from_secs(5))
            .no_proxy()
            // A redirect could lead a request (and its password or token)
            // to another host or to plaintext: the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client setup failed: {e}")))?;
        Ok(ControlClient {
            http,
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            bearer: None,
            max_body: 64 << 20,
        })
    }

    /// A copy of this client that sends `Authorization: Bearer token`.
    pub fn with_bearer(&self, token: &str) -> ControlClient {
        ControlClient {
            bearer: Some(token.into()),
            ..self.clone()
        }
    }

    /// The bearer token this client sends, if any (for callers that make
    /// their own requests with [`ControlClient::http`]).
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }

    /// The URL of the replica in use.
    pub fn base_url(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every URL this client was given.
    pub fn base_urls(&self) -> &[String] {
        &self.bases
    }

    /// The underlying HTTP client (same trust settings), for callers that
    /// need a request this crate has no method for, such as tests sending
    /// deliberately malformed bodies.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends one request and decodes a JSON answer (or `()` for 204).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let mut tried = 0;
        let (mut resp, base) = loop {
            let at = self.current.load(Ordering::Relaxed) % self.bases.len();
            let base = &self.bases[at];
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .timeout(timeout);
            if let Some(t) = &self.bearer {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => break (resp, base),
                Err(e) if e.is_connect() && tried + 1 < self.bases.len() => {
                    // Not sent: the next replica may take it. Another
                    // request may have moved on already; move only once.
                    tried += 1;
                    let _ = self.current.compare_exchange(
                        at,
                        (at + 1) % self.bases.len(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                Err(e) => return Err(transport_error(base, e)),
            }
        };
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(base, e))? {
            if bytes.len() + chunk.len() > self.max_body {
                return Err(ClientError::BadAnswer(format!(
                    "answer larger than {} bytes",
                    self.max_body
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let bytes = if bytes.is_empty() {
            b"null".to_vec()
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

fn transport_error(base: &str, e: reqwest::Error) -> ClientError {
    let mut detail = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    let mut cert = false;
    let mut wrong_name = false;
    while let Some(s) = src {
        let text = s.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            cert = true;
        }
        if let Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) = s.downcast_ref::<rustls::Error>()
        {
            wrong_name = true;
        }
        if text.contains("not valid for name") {
            wrong_name = true;
        }
        detail = text;
        src = s.source();
    }
    let url = base.to_string();
    if wrong_name {
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
            .unwrap_or_default();
        ClientError::CertificateWrongName { url, host, detail }
    } else if cert {
        ClientError::CertificateNotTrusted { url, detail }
    } else if e.is_timeout() {
        ClientError::Unreachable {
            url,
            detail: "no answer in time".into(),
        }
    } else {
        ClientError::Unreachable { url, detail }
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "unexpected".into(),
            message: format!("the control plane answered {status} without an error description"),
        },
    }
}
