// SPDX-License-Identifier: MPL-2.0

//! The TLS client configuration built from the PEM files a user names: the CA that signs
//! the broker's certificate and, for mutual TLS, a client certificate and key. Errors
//! name the setting and the file, never key material.

use std::path::Path;
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use crate::error::SettingError;

/// Paths of the TLS files: the CA that signs the broker's certificate, and optionally a
/// client certificate and key for mutual authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: String,
    pub cert: Option<String>,
    pub key: Option<String>,
}

fn read_file(setting: &str, path: &str) -> Result<Vec<u8>, SettingError> {
    if Path::new(path).is_dir() {
        return Err(SettingError::Unreadable(format!(
            "{setting}: {path} is a directory, not a PEM file"
        )));
    }
    std::fs::read(path)
        .map_err(|e| SettingError::io(format!("{setting}: cannot read {path}: {e}"), &e))
}

fn read_certificates(
    setting: &str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, SettingError> {
    let pem = read_file(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting}: {path} is not a valid PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{setting}: {path} holds no PEM certificate").into());
    }
    Ok(certs)
}

impl TlsFiles {
    /// Reads and checks the files and builds the TLS client configuration. Certificate
    /// verification, host name included, is always on. Errors name the setting and file
    /// but never show key material.
    pub fn load(&self) -> Result<Arc<rustls::ClientConfig>, SettingError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates("tls-ca-file", &self.ca)? {
            roots.add(cert).map_err(|e| {
                format!(
                    "tls-ca-file: {} holds an unusable CA certificate: {e}",
                    self.ca
                )
            })?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certificates("tls-cert-file", cert)?;
                let key_pem = read_file("tls-key-file", key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                    format!("tls-key-file: {key} holds no PEM private key (PKCS#1, PKCS#8 or SEC1)")
                })?;
                let identity = client_identity(builder.crypto_provider(), chain, key_der)
                    .map_err(|e| {
                        format!("tls-cert-file/tls-key-file: {cert} and {key} do not form a usable client identity: {e}")
                    })?;
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)))
            }
            (Some(_), None) => return Err("tls-cert-file is set but tls-key-file is not".into()),
            (None, Some(_)) => return Err("tls-key-file is set but tls-cert-file is not".into()),
        };
        Ok(Arc::new(config))
    }
}

/// The client's certificate chain and key. The certificate is the broker's to judge, so it
/// is sent as given: rustls checks that it matches the key by parsing it with webpki, which
/// reads only X.509 v3, while the certificate recipe of the DLSPS documentation
/// (`openssl x509 -req` without extensions) makes v1 ones, which mosquitto accepts. So a
/// key that does not match is refused where the certificate can be read, and a certificate
/// webpki cannot read goes to the broker unchecked.
fn client_identity(
    provider: &CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, rustls::Error> {
    let key = provider.key_provider.load_private_key(key)?;
    let identity = CertifiedKey::new(chain, key);
    match identity.keys_match() {
        Err(mismatch @ rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(mismatch)
        }
        _ => Ok(identity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    fn openssl(dir: &Path, args: &str) {
        let status = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args}");
    }

    /// A CA and a client certificate signed the way the DLSPS document does it:
    /// `openssl x509 -req` without extensions, which gives an X.509 v1 certificate.
    fn dlsps_client_certificate(dir: &Path) -> (String, String, String) {
        openssl(dir, "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=test-ca");
        openssl(dir, "genrsa -out client.key 2048");
        openssl(
            dir,
            "req -new -key client.key -out client.csr -subj /CN=client",
        );
        openssl(dir, "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 30");
        let text = Command::new("openssl")
            .args(["x509", "-in", "client.crt", "-noout", "-text"])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"));
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        (path("ca.crt"), path("client.crt"), path("client.key"))
    }

    #[test]
    fn a_v1_client_certificate_is_sent_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = dlsps_client_certificate(dir.path());
        let files = TlsFiles {
            ca,
            cert: Some(cert),
            key: Some(key),
        };
        let config = files
            .load()
            .expect("the DLSPS recipe's certificate is accepted");
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The CA's own v3 certificate with the client's key: webpki reads it, keys differ.
        let (ca, _, key) = dlsps_client_certificate(dir.path());
        let files = TlsFiles {
            ca: ca.clone(),
            cert: Some(ca),
            key: Some(key),
        };
        let err = files.load().unwrap_err();
        assert!(
            err.message()
                .contains("do not form a usable client identity"),
            "{err}"
        );
        let missing: PathBuf = dir.path().join("absent.crt");
        let files = TlsFiles {
            ca: missing.to_str().unwrap().into(),
            cert: None,
            key: None,
        };
        assert!(matches!(files.load(), Err(SettingError::NotFound(_))));
    }
}
