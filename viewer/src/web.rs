// SPDX-License-Identifier: MPL-2.0

//! The HTTP side: the page (embedded at build time), its script and style, and `/events`, the
//! Server-Sent Events stream of the hub.
//!
//! Access: without a token (the default, on a loopback address) only requests whose `Host`
//! is a loopback name are served, so a web site cannot reach the viewer through DNS
//! rebinding. With a token (required on any other address) every request must carry it, as
//! `?token=` (the URL the viewer prints) or as the cookie the first such request sets.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::hub::{Event, Hub};

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

const COOKIE: &str = "analyticsmqtt_viewer_token";
/// Everything the page loads comes from the viewer; images are `data:` URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub struct App {
    pub hub: Arc<Hub>,
    pub token: Option<String>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/events", get(events))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn events(
    State(app): State<Arc<App>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (snapshot, receiver) = app.hub.subscribe();
    let stream = futures_util::stream::unfold(
        (Some(snapshot), receiver, app),
        |(first, mut receiver, app)| async move {
            if let Some(snapshot) = first {
                return Some((Ok(sse(&snapshot)), (None, receiver, app)));
            }
            let event = match receiver.recv().await {
                Ok(event) => sse(&event),
                // The page fell behind: it starts over from the current state.
                Err(RecvError::Lagged(_)) => {
                    let (snapshot, fresh) = app.hub.subscribe();
                    receiver = fresh;
                    sse(&snapshot)
                }
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), (None, receiver, app)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn sse(event: &Event) -> SseEvent {
    SseEvent::default().event(event.name).data(&event.data)
}

/// Whether a `Host` header names this machine's loopback interface.
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // "[::1]:8080", "127.0.0.1:8080", "localhost:8080"
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn query_token(request: &Request) -> Option<&str> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

fn cookie_token(request: &Request) -> Option<&str> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let mut set_cookie = None;
    match &app.token {
        None => {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !loopback_host(host) {
                return (
                    StatusCode::FORBIDDEN,
                    "this viewer serves loopback addresses only; start it with --listen and \
                     --token to open it to others\n",
                )
                    .into_response();
            }
        }
        Some(token) => {
            if query_token(&request).is_some_and(|t| same(t, token)) {
                set_cookie = Some(format!(
                    "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                ));
            } else if !cookie_token(&request).is_some_and(|t| same(t, token)) {
                return (
                    StatusCode::UNAUTHORIZED,
                    "a token is required: open the URL the viewer printed (?token=...)\n",
                )
                    .into_response();
            }
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass_without_a_token() {
        for host in [
            "localhost:8080",
            "127.0.0.1:1",
            "127.1.2.3",
            "[::1]:80",
            "LOCALHOST",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn tokens_compare_by_value() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
