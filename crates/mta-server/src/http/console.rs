//! The operator console: `GET /console` (one HTML page), `/console/console.js` and `/console/console.css`,
//! embedded in the binary. No key is needed for these three (they hold no data); the page's script reads
//! and acts through the authenticated `/api/v1` routes with the key the operator types.
//!
//! Every answer carries a strict Content-Security-Policy (same-origin script, style and fetches only, no inline
//! code, no framing, no form submission) and `X-Content-Type-Options: nosniff`.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The policy every console answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page.
const HTML: &str = include_str!("console/index.html");
/// Its script (no build step: plain ES2020).
const JS: &str = include_str!("console/console.js");
/// Its style sheet.
const CSS: &str = include_str!("console/console.css");

/// The console's paths, for request metrics.
pub const PATHS: &[&str] = &["/console", "/console/console.js", "/console/console.css"];

/// The console's routes (public: static assets only).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PATHS[0], get(|| async { asset("text/html; charset=utf-8", HTML) }))
        .route(PATHS[1], get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route(PATHS[2], get(|| async { asset("text/css; charset=utf-8", CSS) }))
}

/// `body` as `content_type` with the console's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // Revalidate: an upgraded binary's page is seen at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style_and_names_its_assets() {
        let lower = HTML.to_ascii_lowercase();
        assert!(!lower.contains("<style"), "inline style element");
        assert!(!lower.contains(" style="), "inline style attribute");
        assert!(!has_event_handler_attribute(&lower), "inline event handler attribute");
        for script in lower.match_indices("<script").map(|(i, _)| &lower[i..]) {
            let tag = &script[..script.find('>').unwrap_or(script.len())];
            assert!(tag.contains("src=\"/console/console.js\""), "inline script: {tag}");
        }
        assert!(HTML.contains("href=\"/console/console.css\""));
        assert!(!lower.contains("http://") && !lower.contains("https://"), "a link to another origin");
        for hook in ["api-key", "health-state", "message-id", "message-status"] {
            assert!(HTML.contains(&format!("data-test=\"{hook}\"")), "hook {hook}");
        }
        for hook in ["queue-row", "suspend", "resume"] {
            assert!(JS.contains(&format!("\"{hook}\"")), "hook {hook} made by the script");
        }
    }

    /// An ` onclick=`-like attribute anywhere in `html`.
    fn has_event_handler_attribute(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn the_script_never_puts_the_key_in_a_url_or_the_console() {
        assert!(!JS.contains("localStorage"), "the key stays in sessionStorage");
        assert!(!JS.contains("console.log"), "nothing logged");
        assert!(!JS.contains("eval("), "no eval (CSP forbids it)");
        assert!(!JS.contains("innerHTML"), "DOM built from text nodes, not markup");
    }
}
