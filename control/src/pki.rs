//! The control plane's credentials in the data dir: a CA, the API server's serving
//! certificate, its client certificate towards node agents (`kubectl logs`/`exec` proxying),
//! the admin bearer token, and `admin.kubeconfig` that stock kubectl uses as is.
//!
//! The CA key and the token are created once and reused; the serving and client certificates
//! are re-issued on every start so the serving SANs always name the current listen address.
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// File names inside the data dir.
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "apiserver.crt";
const SERVER_KEY: &str = "apiserver.key";
/// The API server's client certificate towards node agents (and its key).
pub const KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.crt";
const KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";
/// The common name of that certificate (what agents authorize).
pub const KUBELET_CLIENT_NAME: &str = "kube-apiserver-kubelet-client";
pub const ADMIN_TOKEN: &str = "admin.token";
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";

/// What the API server needs to serve HTTPS and authenticate the admin.
pub struct Credentials {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// The client certificate (and key) the API server presents to node agents.
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
    pub admin_token: String,
}

/// The CA's parameters; rebuilt identically on every start so certificates it signs name
/// the same issuer (and key identifier) as the stored CA certificate.
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "keel-ca");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "keel");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Loads the CA and token from `data_dir` (creating them on first start) and issues a
/// serving certificate for `hosts` (DNS names or IP addresses).
pub fn load_or_create(data_dir: &Path, hosts: &[String]) -> Result<Credentials> {
    fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let ca_cert_path = data_dir.join(CA_CERT);
    let ca_key_path = data_dir.join(CA_KEY);
    let (ca_pem, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
        let key_pem = fs::read_to_string(&ca_key_path)
            .with_context(|| format!("reading {}", ca_key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parsing {}", ca_key_path.display()))?;
        let cert = fs::read_to_string(&ca_cert_path)
            .with_context(|| format!("reading {}", ca_cert_path.display()))?;
        (cert, key)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        fs::write(&ca_cert_path, cert.pem())
            .with_context(|| format!("writing {}", ca_cert_path.display()))?;
        tracing::info!(path = %ca_cert_path.display(), "generated the cluster CA");
        (cert.pem(), key)
    };
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let mut sans: Vec<SanType> = Vec::new();
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.as_str()
                    .try_into()
                    .with_context(|| format!("invalid DNS name {host:?}"))?,
            ),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    params.subject_alt_names = sans;
    let server_key = KeyPair::generate()?;
    let server_cert = params.signed_by(&server_key, &issuer)?;
    fs::write(data_dir.join(SERVER_CERT), server_cert.pem())?;
    write_private(
        &data_dir.join(SERVER_KEY),
        server_key.serialize_pem().as_bytes(),
    )?;

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, KUBELET_CLIENT_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let client_key = KeyPair::generate()?;
    let client_cert = params.signed_by(&client_key, &issuer)?;
    fs::write(data_dir.join(KUBELET_CLIENT_CERT), client_cert.pem())?;
    write_private(
        &data_dir.join(KUBELET_CLIENT_KEY),
        client_key.serialize_pem().as_bytes(),
    )?;

    let token_path = data_dir.join(ADMIN_TOKEN);
    let admin_token = match fs::read_to_string(&token_path) {
        Ok(token) if !token.trim().is_empty() => token.trim().to_string(),
        _ => {
            let bytes: [u8; 32] = rand::random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&token_path, token.as_bytes())?;
            token
        }
    };
    Ok(Credentials {
        ca_pem,
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        kubelet_client_cert_pem: client_cert.pem(),
        kubelet_client_key_pem: client_key.serialize_pem(),
        admin_token,
    })
}

/// Writes `admin.kubeconfig` for `server_url` (e.g. `https://127.0.0.1:6443`); returns its path.
pub fn write_kubeconfig(
    data_dir: &Path,
    server_url: &str,
    credentials: &Credentials,
) -> Result<PathBuf> {
    let ca = base64::engine::general_purpose::STANDARD.encode(credentials.ca_pem.as_bytes());
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: keel
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: keel
  context:
    cluster: keel
    user: admin
    namespace: default
current-context: keel
preferences: {{}}
",
        token = credentials.admin_token
    );
    let path = data_dir.join(ADMIN_KUBECONFIG);
    write_private(&path, kubeconfig.as_bytes())?;
    Ok(path)
}

/// The machine's hostname (for the serving certificate), if it has one.
pub fn hostname() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("keel-pki-{}", uuid::Uuid::new_v4()));
        let first = load_or_create(&dir, &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let second = load_or_create(&dir, &["127.0.0.1".into()]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.admin_token.len(), 64);
        assert!(dir.join(KUBELET_CLIENT_CERT).exists());
        assert!(second.kubelet_client_cert_pem.contains("BEGIN CERTIFICATE"));
        let path = write_kubeconfig(&dir, "https://127.0.0.1:6443", &second).unwrap();
        let text = fs::read_to_string(path).unwrap();
        assert!(text.contains("server: https://127.0.0.1:6443"));
        assert!(text.contains(&second.admin_token));
        let _ = fs::remove_dir_all(dir);
    }
}
