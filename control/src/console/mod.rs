//! The web console (docs/console.md): server-rendered pages on the
//! control plane's HTTPS port, for owners and their friends who never
//! open a shell.
//!
//! - **One code path with the API.** A page never queries the store on
//!   its own for what the API answers: it calls the API's handler
//!   functions in-process, with the session token from its cookie as the
//!   bearer credential (the cookie holds a login token of the same kind
//!   `POST /v1/login` returns, stored hashed like every token). Tenant
//!   isolation, validation, auditing and the login throttle are therefore
//!   exactly the API's, and another owner's server is the API's 404.
//! - **Web security** lives in this module: the session cookie
//!   (`__Host-`, `Secure; HttpOnly; SameSite=Strict; Path=/`), a CSRF
//!   token on every form derived from the cookie and compared in constant
//!   time ([`Visitor::check_csrf`]), and the headers every response gets
//!   ([`security_headers`]): a strict Content-Security-Policy, no
//!   framing, no caching, no referrer.
//! - **Templates** are askama's, compiled into the binary from
//!   `control/templates/`; the one stylesheet is embedded too. Nothing is
//!   loaded from another site, and there is no JavaScript.
//!
//! Adding a page: a template that `{% extends "base.html" %}` with a
//! `l: Layout` field, a handler that takes a [`Visitor`] (signed-in) and
//! calls [`render`], and a POST handler that calls
//! [`Visitor::check_csrf`] first. Every form includes
//! `<input type="hidden" name="csrf" value="{{ l.csrf }}">`.

mod pages;

use crate::app::{ApiResult, AppState};
use crate::error::AppError;
use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The signed-in session's cookie. `__Host-` makes browsers refuse it
/// unless it is Secure, has Path=/ and no Domain: no sibling host can
/// plant or read it.
pub const SESSION_COOKIE: &str = "__Host-hushgate";
/// Before sign-in: a random value the sign-in and sign-up forms' CSRF
/// token is derived from (a login form must not be postable by another
/// site either).
pub const PRESESSION_COOKIE: &str = "__Host-hushgate-pre";

/// The Content-Security-Policy of every console response: only this
/// origin's stylesheet, images only inline (`data:`), no scripts at all,
/// forms only to this origin, never in a frame.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The policy of the one page with a script (a WireGuard app's
/// configuration, whose key pair is made in the browser): [`CSP`] plus
/// scripts from this origin only (no inline script, no `eval`) and
/// requests to this origin only.
pub const CSP_WITH_SCRIPT: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("../../assets/console.css");
const WIREGUARD_JS: &str = include_str!("../../assets/wireguard.js");
/// qrcode-generator 2.0.4 (MIT, Kazuhiko Arase; from npm, unchanged):
/// the configuration's QR code must be drawn in the browser, because it
/// holds the private key the server never sees.
const QRCODE_JS: &str = include_str!("../../assets/qrcode.js");

/// The console's pages; merged into [`crate::app::router`] beside the
/// API's table (whose routes stay the API).
pub fn router() -> Router<Arc<AppState>> {
    use pages as p;
    Router::new()
        .route("/", get(p::home))
        .route("/assets/console.css", get(stylesheet))
        .route("/signin", get(p::signin_page).post(p::signin))
        .route("/signout", post(p::signout))
        .route("/signup", get(p::signup_page).post(p::signup))
        .route("/invitation", post(p::accept_invitation))
        .route("/account", get(p::account))
        .route("/account/password", post(p::change_password))
        .route("/account/totp", post(p::totp_begin))
        .route("/account/totp/confirm", post(p::totp_confirm))
        .route("/account/totp/disable", post(p::totp_disable))
        .route("/account/devices/{id}/rename", post(p::rename_device))
        .route("/account/devices/{id}/remove", post(p::remove_device))
        .route("/account/sessions/{id}/revoke", post(p::end_session))
        .route("/servers", get(p::servers).post(p::register_server))
        .route("/servers/{name}", get(p::server))
        .route("/servers/{name}/policy", post(p::server_policy))
        .route("/servers/{name}/enrollment", post(p::server_enrollment))
        .route("/servers/{name}/shares", post(p::create_share))
        .route(
            "/servers/{name}/shares/{user}/remove",
            post(p::remove_share),
        )
        .route("/servers/{name}/invitations", post(p::create_invitation))
        .route(
            "/servers/{name}/invitations/{id}/revoke",
            post(p::revoke_invitation),
        )
        .route("/servers/{name}/devices/{id}", post(p::decide_device))
        .route(
            "/servers/{name}/admissions/{id}/revoke",
            post(p::revoke_admission),
        )
        .route("/shared", get(p::shared))
        .route("/device", get(p::device_page).post(p::device_decide))
        .route(
            "/shared/{name}/wireguard",
            get(p::wireguard_page).post(p::wireguard_admit),
        )
        .route("/assets/wireguard.js", get(|| script(WIREGUARD_JS)))
        .route("/assets/qrcode.js", get(|| script(QRCODE_JS)))
        .layer(axum::middleware::map_response(security_headers))
}

/// (method, path) of every console page, for the isolation tests.
pub fn pages() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GET", "/"),
        ("GET", "/signin"),
        ("POST", "/signin"),
        ("POST", "/signout"),
        ("GET", "/signup"),
        ("POST", "/signup"),
        ("POST", "/invitation"),
        ("GET", "/account"),
        ("POST", "/account/password"),
        ("POST", "/account/totp"),
        ("POST", "/account/totp/confirm"),
        ("POST", "/account/totp/disable"),
        ("POST", "/account/devices/{id}/rename"),
        ("POST", "/account/devices/{id}/remove"),
        ("POST", "/account/sessions/{id}/revoke"),
        ("GET", "/servers"),
        ("POST", "/servers"),
        ("GET", "/servers/{name}"),
        ("POST", "/servers/{name}/policy"),
        ("POST", "/servers/{name}/enrollment"),
        ("POST", "/servers/{name}/shares"),
        ("POST", "/servers/{name}/shares/{user}/remove"),
        ("POST", "/servers/{name}/invitations"),
        ("POST", "/servers/{name}/invitations/{id}/revoke"),
        ("POST", "/servers/{name}/devices/{id}"),
        ("POST", "/servers/{name}/admissions/{id}/revoke"),
        ("GET", "/shared"),
        ("GET", "/device"),
        ("POST", "/device"),
        ("GET", "/shared/{name}/wireguard"),
        ("POST", "/shared/{name}/wireguard"),
    ]
}

/// The headers every console response carries (pages, redirects,
/// errors and the stylesheet alike).
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    // A page that needs its script set its own (stricter elsewhere).
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        set(h, header::CONTENT_SECURITY_POLICY, CSP);
    }
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    // Pages show secrets (tokens, links, recovery codes) and tenants'
    // data: nothing is kept by the browser or anything in between.
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    resp
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
}

async fn script(text: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        text,
    )
}

/// What the shared layout (`base.html`) needs: every page has one.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub title: String,
    /// The account signed in, if any (the navigation shows its pages).
    pub user: Option<String>,
    /// The CSRF token every form of the page carries.
    pub csrf: String,
    /// A notice at the top ("Saved.").
    pub notice: Option<String>,
}

/// Renders a page as a full HTML response with `status`.
pub fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// The CSRF token of a cookie value: a hash of it under a label. A page
/// from another site can neither read the cookie nor this token, and the
/// server needs to keep nothing to check it.
pub fn csrf_of(cookie_value: &str) -> String {
    let h = Sha256::digest(format!("hushgate-console-csrf:{cookie_value}").as_bytes());
    URL_SAFE_NO_PAD.encode(h)
}

/// Constant-time: how much of a guess matched must not show in timing.
fn csrf_matches(cookie_value: &str, sent: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(csrf_of(cookie_value).as_bytes(), sent.as_bytes()).into()
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value with the console's flags; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The account behind a request's session cookie, as the API sees it.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub username: String,
    /// Headers carrying the session token as the bearer credential, for
    /// calling the API's handlers.
    pub api: HeaderMap,
    /// The CSRF token this session's forms carry.
    pub csrf: String,
    session_token: String,
}

impl Visitor {
    /// Refuses a form that does not carry this session's CSRF token.
    pub fn check_csrf(&self, sent: &str) -> Result<(), Failure> {
        if csrf_matches(&self.session_token, sent) {
            Ok(())
        } else {
            Err(csrf_refused())
        }
    }

    /// The shared layout for a page of this visitor.
    pub fn layout(&self, title: impl Into<String>) -> Layout {
        Layout {
            title: title.into(),
            user: Some(self.username.clone()),
            csrf: self.csrf.clone(),
            notice: None,
        }
    }
}

/// Headers that carry `token` as the bearer credential, plus what the
/// API reads from the request itself (forwarding headers).
fn api_headers(request: &HeaderMap, token: &str) -> HeaderMap {
    let mut h = request.clone();
    h.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    h
}

/// Who the session cookie belongs to, or `None` (no cookie, ended or
/// expired session).
pub async fn visitor(st: &AppState, headers: &HeaderMap) -> ApiResult<Option<Visitor>> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let api = api_headers(headers, token);
    match crate::tenants::account(st, &api).await {
        Ok((user, _)) => Ok(Some(Visitor {
            username: user.username,
            api,
            csrf: csrf_of(token),
            session_token: token.to_string(),
        })),
        Err(e) if e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::FORBIDDEN => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl FromRequestParts<Arc<AppState>> for Visitor {
    type Rejection = Failure;

    /// Pages for signed-in accounts only: others go to the sign-in page.
    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match visitor(st, &parts.headers).await? {
            Some(v) => Ok(v),
            None => Err(Failure::new(Redirect::to("/signin").into_response())),
        }
    }
}

/// A console request that failed: a page saying why, with the API's
/// status (another owner's server is the same 404 as an unknown one).
#[derive(Debug)]
pub struct Failure(Box<Response>);

impl Failure {
    pub fn new(resp: Response) -> Self {
        Failure(Box::new(resp))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        *self.0
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    l: Layout,
    status: u16,
    message: String,
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Self {
        let page = ErrorPage {
            l: Layout {
                title: e.status.canonical_reason().unwrap_or("Error").into(),
                ..Layout::default()
            },
            status: e.status.as_u16(),
            message: e.message,
        };
        Failure::new(render(e.status, &page))
    }
}

fn csrf_refused() -> Failure {
    AppError::forbidden(
        "csrf",
        "this form is out of date or did not come from this console; go back, reload the page and try again",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_among_others_and_only_by_its_whole_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-hushgate-pre=p"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-hushgate=hgu_x"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("hgu_x"));
        assert_eq!(cookie(&h, PRESESSION_COOKIE), Some("p"));
        assert_eq!(cookie(&h, "__Host-hush"), None);
    }

    #[test]
    fn the_csrf_token_belongs_to_one_cookie_value() {
        let t = csrf_of("hgu_one");
        assert!(csrf_matches("hgu_one", &t));
        assert!(!csrf_matches("hgu_two", &t));
        assert!(!csrf_matches("hgu_one", ""));
        assert!(!csrf_matches("hgu_one", &t[..t.len() - 1]));
        // The token does not show the cookie.
        assert!(!t.contains("hgu_one"));
    }

    #[test]
    fn cookies_are_set_with_every_flag() {
        let c = set_cookie(SESSION_COOKIE, "hgu_x", 60);
        assert_eq!(
            c.to_str().unwrap(),
            "__Host-hushgate=hgu_x; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=60"
        );
    }
}
