//! The streaming server's TLS: its serving certificate (given, or self-signed and kept), and
//! client-certificate authentication against the cluster CA, so that only the control plane
//! (a client certificate the cluster CA signed, with an authorized common name) gets in.
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::{ServingCert, StreamingConfig, StreamingError};

/// File names of a kept self-signed pair (in [`ServingCert::SelfSigned`]'s directory).
pub const SELF_SIGNED_CERT: &str = "streaming.crt";
pub const SELF_SIGNED_KEY: &str = "streaming.key";

/// The server side of TLS, ready to accept.
pub(crate) struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub cert_pem: String,
    /// Lowercase hex SHA-256 of the serving certificate (DER).
    pub cert_sha256: String,
}

fn tls_error(what: &str) -> impl FnOnce(rustls::Error) -> StreamingError + '_ {
    move |e| StreamingError::Tls(format!("{what}: {e}"))
}

/// Builds the acceptor: serving certificate, client CA, mandatory-or-401 client certificates.
pub(crate) fn setup(config: &StreamingConfig) -> Result<Tls, StreamingError> {
    let (cert_pem, key_pem) = serving_pair(&config.serving_cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            StreamingError::Certificate(format!("parsing the serving certificate: {e}"))
        })?;
    let Some(leaf) = certs.first() else {
        return Err(StreamingError::Certificate(
            "the serving certificate file holds no certificate".into(),
        ));
    };
    let cert_sha256 = hex(&Sha256::digest(leaf.as_ref()));
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| StreamingError::Certificate(format!("parsing the serving key: {e}")))?;

    let ca_pem = fs::read(&config.client_ca).map_err(|e| {
        StreamingError::Certificate(format!(
            "reading the client CA {}: {e}",
            config.client_ca.display()
        ))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert = cert.map_err(|e| {
            StreamingError::Certificate(format!(
                "parsing the client CA {}: {e}",
                config.client_ca.display()
            ))
        })?;
        roots.add(cert).map_err(tls_error("adding the client CA"))?;
    }
    if roots.is_empty() {
        return Err(StreamingError::Certificate(format!(
            "the client CA {} holds no certificate",
            config.client_ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Unauthenticated clients complete the handshake and get a 401 (clearer than a TLS
    // alert); a certificate the CA did not sign fails the handshake.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| StreamingError::Tls(format!("client certificate verifier: {e}")))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error("TLS protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(tls_error("serving certificate"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        cert_pem,
        cert_sha256,
    })
}

/// The serving certificate and key (PEM): read from the given files, or the kept self-signed
/// pair (created on first use), or a fresh self-signed pair held in memory only.
fn serving_pair(serving: &ServingCert) -> Result<(String, String), StreamingError> {
    match serving {
        ServingCert::Files { cert, key } => {
            let read = |path: &Path| {
                fs::read_to_string(path).map_err(|e| {
                    StreamingError::Certificate(format!("reading {}: {e}", path.display()))
                })
            };
            Ok((read(cert)?, read(key)?))
        }
        ServingCert::SelfSigned { dir, hosts } => {
            if let Some(dir) = dir {
                let cert_path = dir.join(SELF_SIGNED_CERT);
                let key_path = dir.join(SELF_SIGNED_KEY);
                if let (Ok(cert), Ok(key)) = (
                    fs::read_to_string(&cert_path),
                    fs::read_to_string(&key_path),
                ) && CertificateDer::from_pem_slice(cert.as_bytes()).is_ok()
                    && PrivateKeyDer::from_pem_slice(key.as_bytes()).is_ok()
                {
                    return Ok((cert, key));
                }
                let (cert, key) = self_signed(hosts)?;
                fs::create_dir_all(dir).map_err(|e| {
                    StreamingError::Certificate(format!("creating {}: {e}", dir.display()))
                })?;
                write_private(&key_path, key.as_bytes())?;
                fs::write(&cert_path, cert.as_bytes()).map_err(|e| {
                    StreamingError::Certificate(format!("writing {}: {e}", cert_path.display()))
                })?;
                Ok((cert, key))
            } else {
                self_signed(hosts)
            }
        }
    }
}

/// A self-signed serving certificate for `hosts` (IP addresses or DNS names), like the
/// kubelet makes when it is given none.
pub fn self_signed(hosts: &[String]) -> Result<(String, String), StreamingError> {
    let cert_error = |e: rcgen::Error| StreamingError::Certificate(format!("generating: {e}"));
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    let host = hosts.first().map(String::as_str).unwrap_or("keel-agent");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{host}-streaming"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "keel");
    // Not a CA: WebPKI verifiers refuse CA certificates as end entities, and a client that
    // wants to trust it directly can take it as its own anchor (pinning needs neither).
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut sans = Vec::new();
    for host in hosts
        .iter()
        .map(String::as_str)
        .chain(["localhost", "127.0.0.1"])
    {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => match host.try_into() {
                Ok(name) => SanType::DnsName(name),
                Err(_) => continue,
            },
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    params.subject_alt_names = sans;
    let key = KeyPair::generate().map_err(cert_error)?;
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), StreamingError> {
    let write = || -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| StreamingError::Certificate(format!("writing {}: {e}", path.display())))
}

/// Who a verified client certificate names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientIdentity {
    pub common_name: String,
}

/// The identity of the peer's (already verified) certificate, if it sent one.
pub(crate) fn client_identity(connection: &rustls::ServerConnection) -> Option<ClientIdentity> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Some(ClientIdentity { common_name })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pairs_are_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("keel-streaming-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let serving = ServingCert::SelfSigned {
            dir: Some(dir.clone()),
            hosts: vec!["10.0.0.5".into(), "node-a".into()],
        };
        let first = serving_pair(&serving).unwrap();
        let second = serving_pair(&serving).unwrap();
        assert_eq!(first, second);
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(dir.join(SELF_SIGNED_KEY))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode, 0o600);
        let der = CertificateDer::from_pem_slice(first.0.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(sans.contains("node-a"), "{sans}");
        let _ = fs::remove_dir_all(&dir);
    }
}
