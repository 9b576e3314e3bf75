// SPDX-License-Identifier: MPL-2.0

//! The TLS client configuration built from the PEM files a user names: the CA that signs
//! the broker's certificate and, for mutual TLS, a client certificate and key. Errors
//! name the setting and the file, never key material.

use std::path::Path;
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!("tls-cert-file/tls-key-file: {cert} and {key} do not form a usable client identity: {e}")
                })?
            }
            (Some(_), None) => return Err("tls-cert-file is set but tls-key-file is not".into()),
            (None, Some(_)) => return Err("tls-key-file is set but tls-cert-file is not".into()),
        };
        Ok(Arc::new(config))
    }
}
