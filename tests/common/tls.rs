// SPDX-License-Identifier: MPL-2.0

//! TLS material generated in the test with the `openssl` command line tool.
//!
//! The `openssl` CLI is used (rather than a certificate crate) because it is
//! what users run to make their own certificates, it is already required next
//! to mosquitto, and it adds nothing to the build of the test binaries.
//! Keys are EC P-256: fast to generate and accepted by mosquitto (OpenSSL) and
//! by rustls.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Validity of the certificates that are meant to be valid, in days.
const VALID_DAYS: &str = "30";

/// Paths of a set of PEM files for TLS tests, all in one temporary directory
/// that lives as long as this value.
///
/// Every private key is an unencrypted PKCS#8 PEM file. Every certificate
/// except the CAs is a leaf (`CA:FALSE`) with the matching extended key
/// usage.
#[derive(Debug)]
pub struct TlsFiles {
    /// The test CA certificate: trust anchor of the broker and the clients.
    pub ca: PathBuf,
    /// Private key of [`TlsFiles::ca`].
    pub ca_key: PathBuf,
    /// Server certificate signed by the CA, subjectAltName
    /// `DNS:localhost, IP:127.0.0.1, IP:::1`.
    pub server_cert: PathBuf,
    /// Private key of [`TlsFiles::server_cert`].
    pub server_key: PathBuf,
    /// Client certificate (CN `harness-client`) signed by the CA.
    pub client_cert: PathBuf,
    /// Private key of [`TlsFiles::client_cert`].
    pub client_key: PathBuf,
    /// A second CA that has nothing to do with [`TlsFiles::ca`].
    pub other_ca: PathBuf,
    /// Private key of [`TlsFiles::other_ca`].
    pub other_ca_key: PathBuf,
    /// Client certificate (CN `harness-stranger`) signed by the unrelated CA.
    pub other_client_cert: PathBuf,
    /// Private key of [`TlsFiles::other_client_cert`].
    pub other_client_key: PathBuf,
    /// Server certificate signed by the CA with the same names as
    /// [`TlsFiles::server_cert`] but valid only in January 2020.
    pub expired_server_cert: PathBuf,
    /// Private key of [`TlsFiles::expired_server_cert`].
    pub expired_server_key: PathBuf,
    /// Server certificate signed by the CA for `DNS:other.example` only.
    pub wrong_host_server_cert: PathBuf,
    /// Private key of [`TlsFiles::wrong_host_server_cert`].
    pub wrong_host_server_key: PathBuf,
    dir: TempDir,
}

/// One certificate authority that `openssl ca` signs with.
struct Authority<'a> {
    /// Section name of the CA in the generated openssl configuration.
    section: &'a str,
    cert: &'a Path,
    key: &'a Path,
}

impl TlsFiles {
    /// Generates all certificates and keys in a new temporary directory.
    ///
    /// Panics with openssl's output when a step fails.
    pub fn generate() -> TlsFiles {
        let dir = tempfile::Builder::new()
            .prefix("harness-tls-")
            .tempdir()
            .expect("create TLS temp dir");
        let root = dir.path().to_path_buf();
        let path = |name: &str| root.join(name);
        let config = path("openssl.cnf");
        fs::write(&config, openssl_config(&root)).expect("write openssl.cnf");
        for db in ["db-main", "db-other"] {
            fs::create_dir(path(db)).expect("create CA database dir");
            fs::write(path(db).join("index.txt"), "").expect("write CA index");
            fs::write(path(db).join("serial"), "1000\n").expect("write CA serial");
        }

        let files = TlsFiles {
            ca: path("ca.pem"),
            ca_key: path("ca.key"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
            other_ca: path("other-ca.pem"),
            other_ca_key: path("other-ca.key"),
            other_client_cert: path("other-client.pem"),
            other_client_key: path("other-client.key"),
            expired_server_cert: path("expired-server.pem"),
            expired_server_key: path("expired-server.key"),
            wrong_host_server_cert: path("wrong-host-server.pem"),
            wrong_host_server_key: path("wrong-host-server.key"),
            dir,
        };

        let main = Authority {
            section: "ca_main",
            cert: &files.ca,
            key: &files.ca_key,
        };
        let other = Authority {
            section: "ca_other",
            cert: &files.other_ca,
            key: &files.other_ca_key,
        };
        make_ca(&config, &main, "Harness Test CA");
        make_ca(&config, &other, "Harness Unrelated CA");

        let valid = Validity::Days(VALID_DAYS);
        let leaves = [
            (
                &main,
                &files.server_cert,
                &files.server_key,
                "localhost",
                "ext_server",
                valid,
            ),
            (
                &main,
                &files.client_cert,
                &files.client_key,
                "harness-client",
                "ext_client",
                valid,
            ),
            (
                &other,
                &files.other_client_cert,
                &files.other_client_key,
                "harness-stranger",
                "ext_client",
                valid,
            ),
            (
                &main,
                &files.expired_server_cert,
                &files.expired_server_key,
                "localhost",
                "ext_server",
                Validity::Range("20200101000000Z", "20200201000000Z"),
            ),
            (
                &main,
                &files.wrong_host_server_cert,
                &files.wrong_host_server_key,
                "other.example",
                "ext_other_host",
                valid,
            ),
        ];
        for (ca, cert, key, cn, extensions, validity) in leaves {
            make_leaf(&config, ca, cert, key, cn, extensions, validity);
        }
        files
    }

    /// The directory holding all files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The certificates of the DLSPS MQTT document's recipe, made with its `openssl` commands
/// as written there: an RSA CA key protected by a pass phrase (`genrsa -des3`), a CA
/// certificate (`req -new -x509 -days 1826`), and server and client keys whose requests the
/// CA signs with `x509 -req ... -CAcreateserial`. Without extensions that gives an X.509 v1
/// certificate, which is what the client gets. The blanks are filled in on the command
/// line: subjects with `-subj`, the pass phrase with `-passout`/`-passin`, and, for the
/// server only, the subjectAltName `IP:127.0.0.1` with `-extfile`, which the document's
/// users must add for a client that checks the broker's name.
#[derive(Debug)]
pub struct DlspsRecipe {
    /// `ca.crt`.
    pub ca: PathBuf,
    /// `server.crt` (X.509 v3: it carries the subjectAltName) and `server.key`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// `client.crt` (X.509 v1) and `client.key`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second CA made the same way, which signed nothing here.
    pub other_ca: PathBuf,
    dir: TempDir,
}

impl DlspsRecipe {
    /// The CA pass phrase, typed at the prompts in the document.
    const PASS: &'static str = "pass:dlsps-ca-pass";

    /// Runs the recipe in a new temporary directory. Panics with openssl's output when a
    /// step fails.
    pub fn generate() -> DlspsRecipe {
        let dir = tempfile::Builder::new()
            .prefix("harness-dlsps-tls-")
            .tempdir()
            .expect("create TLS temp dir");
        let root = dir.path().to_path_buf();
        let path = |name: &str| root.join(name);
        let recipe = DlspsRecipe {
            ca: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
            other_ca: path("other-ca.crt"),
            dir,
        };
        let ca_key = path("ca.key");
        Self::make_ca(&ca_key, &recipe.ca, "/CN=DLSPS recipe CA");
        Self::make_ca(&path("other-ca.key"), &recipe.other_ca, "/CN=Another CA");

        let san = path("server-san.cnf");
        fs::write(&san, "subjectAltName = IP:127.0.0.1\n").expect("write the extension file");
        let leaves = [
            (
                &recipe.server_key,
                "server.csr",
                &recipe.server_cert,
                "/CN=127.0.0.1",
                Some(&san),
            ),
            (
                &recipe.client_key,
                "client.csr",
                &recipe.client_cert,
                "/CN=dlsps-client",
                None,
            ),
        ];
        for (key, csr, cert, subject, extfile) in leaves {
            let csr = path(csr);
            openssl(&["genrsa", "-out", path_str(key), "2048"]);
            openssl(&[
                "req",
                "-new",
                "-out",
                path_str(&csr),
                "-key",
                path_str(key),
                "-subj",
                subject,
            ]);
            let mut sign = vec![
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&recipe.ca),
                "-CAkey",
                path_str(&ca_key),
                "-CAcreateserial",
                "-out",
                path_str(cert),
                "-days",
                "360",
                "-passin",
                Self::PASS,
            ];
            if let Some(extfile) = extfile {
                sign.extend(["-extfile", path_str(extfile)]);
            }
            openssl(&sign);
        }
        recipe
    }

    fn make_ca(key: &Path, cert: &Path, subject: &str) {
        openssl(&[
            "genrsa",
            "-des3",
            "-out",
            path_str(key),
            "-passout",
            Self::PASS,
            "2048",
        ]);
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "1826",
            "-key",
            path_str(key),
            "-out",
            path_str(cert),
            "-subj",
            subject,
            "-passin",
            Self::PASS,
        ]);
    }

    /// The directory holding all files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `openssl x509 -noout -text` of a certificate file.
pub fn certificate_text(cert: &Path) -> String {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", path_str(cert)])
        .output()
        .expect("run openssl");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("openssl prints text")
}

/// Validity period of a leaf certificate.
#[derive(Clone, Copy)]
enum Validity<'a> {
    /// From now on for this many days.
    Days(&'a str),
    /// Explicit `notBefore` and `notAfter` (`YYYYMMDDHHMMSSZ`).
    Range(&'a str, &'a str),
}

/// Runs `openssl` with `args`, panicking with its output on failure.
fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        output.status.success(),
        "openssl {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Writes a new EC P-256 private key to `key`.
fn make_key(key: &Path) {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path_str(key),
    ]);
}

/// Creates a self-signed CA certificate and its key.
fn make_ca(config: &Path, ca: &Authority, common_name: &str) {
    make_key(ca.key);
    let subject = format!("/CN={common_name}");
    openssl(&[
        "req",
        "-config",
        path_str(config),
        "-new",
        "-x509",
        "-key",
        path_str(ca.key),
        "-subj",
        &subject,
        "-days",
        VALID_DAYS,
        "-extensions",
        "ext_ca",
        "-out",
        path_str(ca.cert),
    ]);
}

/// Creates a key and a certificate signed by `ca` with the extensions of
/// section `extensions` of the generated configuration.
fn make_leaf(
    config: &Path,
    ca: &Authority,
    cert: &Path,
    key: &Path,
    common_name: &str,
    extensions: &str,
    validity: Validity,
) {
    make_key(key);
    let csr = cert.with_extension("csr");
    let subject = format!("/CN={common_name}");
    openssl(&[
        "req",
        "-config",
        path_str(config),
        "-new",
        "-key",
        path_str(key),
        "-subj",
        &subject,
        "-out",
        path_str(&csr),
    ]);
    let mut args = vec![
        "ca",
        "-config",
        path_str(config),
        "-name",
        ca.section,
        "-batch",
        "-notext",
        "-cert",
        path_str(ca.cert),
        "-keyfile",
        path_str(ca.key),
        "-in",
        path_str(&csr),
        "-extfile",
        path_str(config),
        "-extensions",
        extensions,
        "-out",
        path_str(cert),
    ];
    match validity {
        Validity::Days(days) => args.extend(["-days", days]),
        Validity::Range(start, end) => args.extend(["-startdate", start, "-enddate", end]),
    }
    openssl(&args);
}

/// The openssl configuration: certificate extensions and two minimal
/// `openssl ca` databases below `root`.
fn openssl_config(root: &Path) -> String {
    let root = path_str(root);
    let leaf = "basicConstraints = critical, CA:FALSE\n\
                keyUsage = critical, digitalSignature\n\
                subjectKeyIdentifier = hash\n\
                authorityKeyIdentifier = keyid";
    let ca_section = |name: &str, db: &str| {
        format!(
            "[{name}]\n\
             database = {root}/{db}/index.txt\n\
             new_certs_dir = {root}/{db}\n\
             serial = {root}/{db}/serial\n\
             default_md = sha256\n\
             policy = policy_any\n\
             unique_subject = no\n\
             copy_extensions = none\n\
             email_in_dn = no\n"
        )
    };
    format!(
        "[req]\n\
         distinguished_name = req_dn\n\
         prompt = no\n\
         [req_dn]\n\
         CN = unused\n\
         [ext_ca]\n\
         basicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [ext_server]\n\
         {leaf}\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n\
         [ext_other_host]\n\
         {leaf}\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:other.example\n\
         [ext_client]\n\
         {leaf}\n\
         extendedKeyUsage = clientAuth\n\
         [ca]\n\
         default_ca = ca_main\n\
         {}\
         {}\
         [policy_any]\n\
         commonName = supplied\n",
        ca_section("ca_main", "db-main"),
        ca_section("ca_other", "db-other"),
    )
}
