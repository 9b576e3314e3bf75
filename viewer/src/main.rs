// SPDX-License-Identifier: MPL-2.0

//! analyticsmqtt-viewer: subscribes to the analytics messages `mqttpublish` (or DLSPS)
//! publishes and shows them live in a browser: each source's latest frame with its boxes,
//! per-label counts over time, message rate, age and latency, and every unreadable message
//! as an error line.

mod hub;
mod mqtt;
mod payload;
mod web;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

/// Serves a live view of analytics metadata published over MQTT.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Options {
    /// Broker host name or address.
    #[arg(long, env = "MQTT_HOST", default_value = "localhost")]
    host: String,

    /// Broker port.
    #[arg(long, env = "MQTT_PORT", default_value_t = 1883)]
    port: u16,

    /// Topic to subscribe to; may be given several times; MQTT wildcards (+, #) allowed.
    #[arg(long = "topic", default_value = "dlstreamer_pipeline_results")]
    topics: Vec<String>,

    /// QoS of the subscriptions (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,

    /// User name for the broker.
    #[arg(long)]
    username: Option<String>,

    /// File whose first line is the broker password (or set MQTT_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,

    /// CA certificate (PEM) to verify the broker with; turns TLS on.
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for brokers that require one (with --tls-key-file).
    #[arg(long, requires = "tls_key_file", requires = "tls_ca_file")]
    tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,

    /// MQTT client id (default: analyticsmqtt-viewer- and a random suffix).
    #[arg(long)]
    client_id: Option<String>,

    /// Address and port the page is served on (port 0: any free port). Anything but a
    /// loopback address requires a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Token every request must carry (?token=...). Generated when --listen is not a loopback
    /// address and none is given (or set VIEWER_TOKEN).
    #[arg(long, env = "VIEWER_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Largest message read, in bytes; larger ones are shown as an error and skipped.
    #[arg(long, default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=mqtt::MAX_PACKET as u64))]
    max_message_size: u64,
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_file(option: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{option} {}: {e}", path.display()))
}

fn settings(options: &Options) -> Result<(mqtt::Settings, Option<String>), String> {
    let password = match &options.password_file {
        Some(path) => {
            let text = String::from_utf8(read_file("--password-file", path)?)
                .map_err(|_| format!("--password-file {}: not UTF-8", path.display()))?;
            Some(text.lines().next().unwrap_or("").to_owned())
        }
        None => std::env::var("MQTT_PASSWORD").ok(),
    };
    let credentials = match (&options.username, password) {
        (Some(user), password) => Some((user.clone(), password.unwrap_or_default())),
        (None, Some(_)) => return Err("a password was given without --username".into()),
        (None, None) => None,
    };
    let tls = match &options.tls_ca_file {
        Some(ca) => {
            let ca = read_file("--tls-ca-file", ca)?;
            let client = match (&options.tls_cert_file, &options.tls_key_file) {
                (Some(cert), Some(key)) => Some((
                    read_file("--tls-cert-file", cert)?,
                    read_file("--tls-key-file", key)?,
                )),
                _ => None,
            };
            Some(mqtt::TlsFiles { ca, client })
        }
        None => None,
    };
    for topic in &options.topics {
        if topic.is_empty() {
            return Err("--topic must not be empty".into());
        }
    }
    let client_id = match &options.client_id {
        Some(id) => id.clone(),
        None => format!(
            "analyticsmqtt-viewer-{}",
            random_hex(4).map_err(|e| format!("/dev/urandom: {e}"))?
        ),
    };
    let token = match &options.token {
        Some(token) if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            return Err("--token must be letters and digits".into())
        }
        Some(token) => Some(token.clone()),
        None if !options.listen.ip().is_loopback() => {
            Some(random_hex(16).map_err(|e| format!("/dev/urandom: {e}"))?)
        }
        None => None,
    };
    Ok((
        mqtt::Settings {
            host: options.host.clone(),
            port: options.port,
            client_id,
            credentials,
            tls,
            topics: options.topics.clone(),
            qos: match options.qos {
                0 => rumqttc::QoS::AtMostOnce,
                1 => rumqttc::QoS::AtLeastOnce,
                _ => rumqttc::QoS::ExactlyOnce,
            },
            keep_alive: Duration::from_secs(5),
        },
        token,
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let options = Options::parse();
    let (settings, token) = match settings(&options) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("analyticsmqtt-viewer: {e}");
            return ExitCode::from(2);
        }
    };
    let broker = format!("{}:{}", settings.host, settings.port);
    let hub = Arc::new(hub::Hub::new(hub::ViewerInfo {
        broker: broker.clone(),
        topics: settings.topics.clone(),
        max_message_size: options.max_message_size as usize,
        version: env!("CARGO_PKG_VERSION"),
    }));

    let listener = match tokio::net::TcpListener::bind(options.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("analyticsmqtt-viewer: --listen {}: {e}", options.listen);
            return ExitCode::from(2);
        }
    };
    let address = listener.local_addr().expect("bound socket has an address");
    let shown = if address.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), address.port())
    } else {
        address
    };
    let url = match &token {
        Some(token) => format!("http://{shown}/?token={token}"),
        None => format!("http://{shown}/"),
    };
    println!(
        "analyticsmqtt-viewer: serving {url} (topics {} on {broker})",
        settings.topics.join(", ")
    );
    let _ = std::io::stdout().flush();

    tokio::spawn(mqtt::run(settings, hub.clone()));
    let ticker = hub.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            interval.tick().await;
            ticker.tick();
        }
    });

    let app = Arc::new(web::App { hub, token });
    let server = axum::serve(listener, web::router(app));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    // Open event streams never end by themselves: a signal ends the process, not a drain.
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                eprintln!("analyticsmqtt-viewer: HTTP server: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    ExitCode::SUCCESS
}
