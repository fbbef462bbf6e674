//! TLS to Postgres with rustls (ring), following libpq's `sslmode`:
//!
//! - `disable`: plain TCP.
//! - `prefer` (default): TLS if the server offers it, else plain. The
//!   certificate is not checked, unless root certificates are given.
//! - `require`: TLS or nothing; the certificate is not checked unless root
//!   certificates are given (`sslrootcert`, or `~/.postgresql/root.crt`
//!   exists), then the chain is, as with `verify-ca`.
//! - `verify-ca`: the chain must lead to a root in `sslrootcert`, or the
//!   server's certificate is itself a self-signed certificate there (as
//!   PostgreSQL's documentation sets it up; see [`FileRoots`]).
//! - `verify-full`: that, and the host name (or IP) matches the certificate
//!   as libpq matches it: subjectAltName entries, else the Common Name.
//!
//! `sslrootcert=system` uses the system's trusted roots and needs
//! `verify-full`, as in libpq 16. Files are read again at every new
//! connection, so rotated certificates are picked up.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::cert::{Cert, NameError};
use super::conninfo::TlsKeys;

/// A TLS set-up problem; the message names the setting and file at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(TlsError(
                    "sslmode=allow is not supported: use prefer (TLS when offered) or disable".into(),
                ))
            }
            other => {
                return Err(TlsError(format!(
                    "invalid sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What the driver is told: it only knows whether TLS is optional.
    pub fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// PEM file, one or more certificates.
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`).
    System,
}

/// The resolved TLS settings of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root: Option<RootCerts>,
    /// Client certificate chain and its key (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            root: None,
            client: None,
        }
    }
}

enum Verify {
    Nothing,
    Chain,
    Full,
}

impl TlsSettings {
    /// Settings from the connection string's keys, then the `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` variables, then libpq's
    /// default files under `~/.postgresql/` (read through `env`).
    pub fn resolve(keys: TlsKeys, env: &dyn Fn(&str) -> Option<String>) -> Result<TlsSettings, TlsError> {
        let pick = |v: Option<String>, var: &str| v.or_else(|| env(var)).filter(|s| !s.is_empty());
        let home_file = |name: &str| {
            env("HOME")
                .map(|h| Path::new(&h).join(".postgresql").join(name))
                .filter(|p| p.is_file())
        };
        let root = match pick(keys.sslrootcert, "PGSSLROOTCERT") {
            Some(s) if s == "system" => Some(RootCerts::System),
            Some(s) => Some(RootCerts::File(s.into())),
            None => home_file("root.crt").map(RootCerts::File),
        };
        let mode = match pick(keys.sslmode, "PGSSLMODE") {
            Some(s) => SslMode::parse(&s)?,
            None if root == Some(RootCerts::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root == Some(RootCerts::System) && mode != SslMode::VerifyFull && mode != SslMode::Disable {
            return Err(TlsError(format!(
                "sslrootcert=system needs sslmode=verify-full (got sslmode={})",
                mode.as_str()
            )));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root.is_none() {
            return Err(TlsError(format!(
                "sslmode={} needs root certificates: set sslrootcert=/path/to/ca.pem (or PGSSLROOTCERT), \
                 put them in ~/.postgresql/root.crt, or use sslrootcert=system for the system's trusted roots",
                mode.as_str()
            )));
        }
        let client = match (pick(keys.sslcert, "PGSSLCERT"), pick(keys.sslkey, "PGSSLKEY")) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            (Some(_), None) => {
                return Err(TlsError(
                    "sslcert is set but sslkey is not: a client certificate needs both".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError(
                    "sslkey is set but sslcert is not: a client certificate needs both".into(),
                ))
            }
            (None, None) => home_file("postgresql.crt").zip(home_file("postgresql.key")),
        };
        Ok(TlsSettings { mode, root, client })
    }

    fn verify(&self) -> Verify {
        match (self.mode, &self.root) {
            (SslMode::VerifyFull, _) => Verify::Full,
            (SslMode::VerifyCa, _) | (_, Some(_)) => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// The rustls configuration; reads the certificate files.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS set-up: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.verify(), &self.root) {
            (Verify::Nothing, _) => Arc::new(NoCheck(provider.clone())),
            (_, Some(RootCerts::System)) => Arc::new(
                rustls_platform_verifier::Verifier::new(provider.clone())
                    .map_err(|e| TlsError(format!("sslrootcert=system: {e}")))?,
            ),
            (level, Some(RootCerts::File(path))) => {
                let anchors = read_certs("sslrootcert", path)?;
                // OpenSSL checks the validity period of the root too; webpki
                // does not, so a root outside it is left out of the chain
                // verifier (files are read at every connection).
                let now = UnixTime::now();
                let mut roots = RootCertStore::empty();
                let mut stale = Vec::new();
                for cert in &anchors {
                    if let Some(why) = outside_validity(cert, now) {
                        stale.push(why);
                        continue;
                    }
                    roots
                        .add(cert.clone())
                        .map_err(|e| TlsError(format!("sslrootcert {}: {e}", path.display())))?;
                }
                let chain = match roots.is_empty() {
                    true => None,
                    false => Some(
                        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                            .build()
                            .map_err(|e| TlsError(format!("sslrootcert {}: {e}", path.display())))?,
                    ),
                };
                Arc::new(FileRoots {
                    chain,
                    anchors,
                    stale,
                    provider: provider.clone(),
                    check_name: matches!(level, Verify::Full),
                })
            }
            (_, None) => return Err(TlsError("no root certificates to verify the server with".into())),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs("sslcert", cert)?;
                let bytes = std::fs::read(key).map_err(|e| file_error("sslkey", key, e))?;
                let key_der = PrivateKeyDer::from_pem_slice(&bytes)
                    .map_err(|e| TlsError(format!("sslkey {}: no PEM private key ({e})", key.display())))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    TlsError(format!(
                        "sslcert {} / sslkey {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
        };
        // Required by servers for sslnegotiation=direct; harmless otherwise.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Arc::new(config))
    }
}

fn file_error(what: &str, path: &Path, e: io::Error) -> TlsError {
    let reason = match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    };
    TlsError(format!("{what} {}: {reason}", path.display()))
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{what} {}: invalid PEM ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// `require`/`prefer` without roots: any certificate, but the handshake
/// signatures are still checked.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Root certificates from a file (`verify-ca`, `verify-full`, and
/// `require`/`prefer` when a root file exists), accepting what libpq with
/// OpenSSL accepts:
///
/// - a server certificate that is itself one of the `sslrootcert`
///   certificates and self-signed (PostgreSQL's documented
///   `openssl req -x509` set-up, a CA certificate) is trusted on its own,
///   once its validity period, intended use and critical extensions pass
///   OpenSSL's checks; webpki would refuse it as a CA used as an end entity;
/// - any other certificate must chain to a root through webpki;
/// - with `verify-full`, the host name is then checked as libpq does
///   (subjectAltName DNS/IP entries, else the subject Common Name; see
///   [`Cert::check_host`]) instead of webpki's subjectAltName-only check.
///
/// Handshake signatures are verified either way, with the provider's
/// algorithms (as webpki's verifier does).
#[derive(Debug)]
struct FileRoots {
    /// None when no root in the file is within its validity period.
    chain: Option<Arc<WebPkiServerVerifier>>,
    anchors: Vec<CertificateDer<'static>>,
    /// The roots left out of `chain`, described.
    stale: Vec<String>,
    provider: Arc<CryptoProvider>,
    check_name: bool,
}

/// Why `cert` is outside its validity period at `now` (None if within, or
/// if it cannot be read here: webpki then decides, as before).
fn outside_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Option<String> {
    let cert = Cert::parse(cert).ok()?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let why = if now > cert.not_after {
        "expired"
    } else if now < cert.not_before {
        "not valid yet"
    } else {
        return None;
    };
    let name = cert.common_name().unwrap_or_else(|| "(no common name)".into());
    Some(format!("{name:?} ({why})"))
}

impl FileRoots {
    /// Some(result) when `end_entity` is a self-signed certificate of the
    /// root file, which OpenSSL trusts without a chain.
    fn trusted_directly(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Option<Result<(), rustls::Error>> {
        if !self.anchors.iter().any(|a| a.as_ref() == end_entity.as_ref()) {
            return None;
        }
        let cert = match Cert::parse(end_entity) {
            Ok(cert) => cert,
            Err(_) => return Some(Err(CertificateError::BadEncoding.into())),
        };
        match cert.is_self_signed() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(_) => return Some(Err(CertificateError::BadEncoding.into())),
        }
        let secs =
            |t: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.max(0).unsigned_abs()));
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        Some(if now_secs < cert.not_before {
            Err(CertificateError::NotValidYetContext {
                time: now,
                not_before: secs(cert.not_before),
            }
            .into())
        } else if now_secs > cert.not_after {
            Err(CertificateError::ExpiredContext {
                time: now,
                not_after: secs(cert.not_after),
            }
            .into())
        } else if cert.has_unhandled_critical_extension() {
            Err(CertificateError::UnhandledCriticalExtension.into())
        } else {
            match cert.is_for_tls_server() {
                Ok(true) => Ok(()),
                Ok(false) => Err(CertificateError::InvalidPurpose.into()),
                Err(_) => Err(CertificateError::BadEncoding.into()),
            }
        })
    }
}

/// A self-signed server certificate that is not in `sslrootcert`.
#[derive(Debug)]
struct NotInRootFile(String);

impl std::fmt::Display for NotInRootFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate is self-signed and is not one of the certificates in sslrootcert (webpki: {}); \
             put the server's certificate itself in the sslrootcert file (as PostgreSQL's documentation \
             does with server.crt), or have it issued by a CA whose certificate is there",
            self.0
        )
    }
}

impl std::error::Error for NotInRootFile {}

/// No valid root issued the certificate, and some roots were left out.
#[derive(Debug)]
struct StaleRoots(String);

impl std::fmt::Display for StaleRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no certificate in sslrootcert that is within its validity period issued the server's \
             certificate (left out, as libpq does: {}); renew the CA certificate and put the new one \
             in the sslrootcert file",
            self.0
        )
    }
}

impl std::error::Error for StaleRoots {}

impl ServerCertVerifier for FileRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.trusted_directly(end_entity, now) {
            Some(result) => result?,
            // rustls checks the name only once the chain has been verified.
            None => match self
                .chain
                .as_ref()
                .map_or(Err(CertificateError::UnknownIssuer.into()), |chain| {
                    chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                }) {
                Ok(_)
                | Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => {
                    // A self-signed certificate has no chain: only being in
                    // the file makes it trusted. Say that, not webpki's
                    // CaUsedAsEndEntity or UnknownIssuer.
                    let self_signed = Cert::parse(end_entity).is_ok_and(|c| c.is_self_signed() == Ok(true));
                    return Err(match (self_signed, e) {
                        (true, rustls::Error::InvalidCertificate(e)) => {
                            let webpki = match e {
                                CertificateError::Other(other) => other.0.to_string(),
                                e => e.to_string(),
                            };
                            CertificateError::Other(rustls::OtherError(Arc::new(NotInRootFile(webpki))))
                                .into()
                        }
                        (false, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
                            if !self.stale.is_empty() =>
                        {
                            CertificateError::Other(rustls::OtherError(Arc::new(StaleRoots(
                                self.stale.join(", "),
                            ))))
                            .into()
                        }
                        (_, e) => e,
                    });
                }
            },
        }
        if self.check_name {
            let cert = Cert::parse(end_entity).map_err(|_| CertificateError::BadEncoding)?;
            cert.check_host(&server_name.to_str())
                .map_err(|e| CertificateError::Other(rustls::OtherError(Arc::new(e))))?;
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connector handed to tokio-postgres and deadpool.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<TlsSettings>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, TlsError> {
        let config = match self.0.mode {
            SslMode::Disable => None,
            _ => Some(self.0.client_config()?),
        };
        Ok(RustlsConnect {
            config,
            host: host.to_owned(),
            mode: self.0.mode,
        })
    }
}

pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    host: String,
    mode: SslMode,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| TlsError("TLS is disabled (sslmode=disable)".into()))?;
            let name = ServerName::try_from(self.host.clone())
                .map_err(|_| TlsError(format!("host {:?} is not a valid TLS server name", self.host)))?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(RustlsStream)
                .map_err(|e| handshake_error(&self.host, self.mode, e))
        })
    }
}

fn handshake_error(host: &str, mode: SslMode, e: io::Error) -> TlsError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => TlsError(format!(
            "certificate verify failed for host {host} (sslmode={}): {}",
            mode.as_str(),
            describe(cert)
        )),
        _ => TlsError(format!("TLS handshake with host {host} failed: {e}")),
    }
}

/// What was wrong with the server's certificate, and what to do about it.
fn describe(e: &CertificateError) -> String {
    use CertificateError as E;
    let what = match e {
        E::Other(other) => other.0.to_string(),
        e => e.to_string(),
    };
    let hint = match e {
        E::Other(other) if !other.0.is::<NameError>() => return what,
        E::NotValidForName | E::NotValidForNameContext { .. } | E::Other(_) => {
            "connect with a host name the certificate is for (with hostaddr= for the address if that name \
             does not resolve here), or use sslmode=verify-ca to check the certificate but not the name"
        }
        E::UnknownIssuer => {
            "sslrootcert must hold the CA certificate that issued the server's certificate \
             (for a self-signed server certificate, that certificate itself)"
        }
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. } => {
            "a certificate is outside its validity period: renew the server's certificate \
             (or the CA's), or check this machine's clock"
        }
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            "the server's certificate is not for a TLS server (keyUsage or extendedKeyUsage): \
             issue one with extendedKeyUsage=serverAuth"
        }
        _ => return what,
    };
    format!("{what}; {hint}")
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No `tls-server-end-point` binding: SCRAM runs without `-PLUS`
    /// (the driver's default `channel_binding=prefer` accepts that).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(keys: &[(&str, &str)], env: &[(&str, &str)]) -> Result<TlsSettings, TlsError> {
        let mut k = TlsKeys::default();
        for (key, v) in keys {
            let v = Some(v.to_string());
            match *key {
                "sslmode" => k.sslmode = v,
                "sslrootcert" => k.sslrootcert = v,
                "sslcert" => k.sslcert = v,
                _ => k.sslkey = v,
            }
        }
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        TlsSettings::resolve(k, &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn modes_and_fallbacks() {
        assert_eq!(resolve(&[], &[]).unwrap(), TlsSettings::default());
        assert_eq!(
            resolve(&[], &[("PGSSLMODE", "require")]).unwrap().mode,
            SslMode::Require
        );
        assert_eq!(
            resolve(&[("sslmode", "disable")], &[("PGSSLMODE", "require")])
                .unwrap()
                .mode,
            SslMode::Disable,
            "the connection string wins over the environment"
        );
        let s = resolve(&[("sslmode", "verify-ca")], &[("PGSSLROOTCERT", "/ca.pem")]).unwrap();
        assert_eq!(s.root, Some(RootCerts::File("/ca.pem".into())));
        assert_eq!(
            resolve(&[("sslrootcert", "system")], &[]).unwrap().mode,
            SslMode::VerifyFull
        );
    }

    #[test]
    fn clear_errors() {
        let e = resolve(&[("sslmode", "verify-everything")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid sslmode \"verify-everything\"") && e.contains("verify-full"),
            "{e}"
        );
        let e = resolve(&[("sslmode", "verify-full")], &[("HOME", "/nonexistent")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sslmode=verify-full needs root certificates") && e.contains("sslrootcert"),
            "{e}"
        );
        let e = resolve(&[("sslmode", "require"), ("sslrootcert", "system")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
        let e = resolve(&[("sslcert", "/c.pem")], &[]).unwrap_err().to_string();
        assert!(e.contains("sslkey"), "{e}");
        let s = resolve(&[("sslmode", "verify-full"), ("sslrootcert", "/x/ca.pem")], &[]).unwrap();
        let e = s.client_config().unwrap_err().to_string();
        assert_eq!(e, "sslrootcert /x/ca.pem: no such file");
    }
}
