//! The dashboard at `/`: plain HTML, CSS and ES modules embedded in the binary (building the
//! crate needs no Node toolchain), served with a strict Content-Security-Policy — no inline
//! script or style, nothing from another origin — and revalidated by ETag.
//!
//! `/api/docs` is the API reference: Swagger UI, vendored, over the generated OpenAPI
//! document, under the same policy.
//!
//! The page talks to the same API as everyone else, with the caller's token; it shows only
//! what the token's role may do (`GET /api/v1/auth/whoami`).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

/// Every asset: path under `/assets/`, media type, bytes.
static ASSETS: [(&str, &str, &[u8]); 12] = [
    ("app.js", "text/javascript", include_bytes!("assets/app.js")),
    (
        "oidc.js",
        "text/javascript",
        include_bytes!("assets/oidc.js"),
    ),
    ("api.js", "text/javascript", include_bytes!("assets/api.js")),
    (
        "views.js",
        "text/javascript",
        include_bytes!("assets/views.js"),
    ),
    ("style.css", "text/css", include_bytes!("assets/style.css")),
    (
        "vendor/uplot.esm.js",
        "text/javascript",
        include_bytes!("assets/vendor/uplot.esm.js"),
    ),
    (
        "vendor/uplot.min.css",
        "text/css",
        include_bytes!("assets/vendor/uplot.min.css"),
    ),
    (
        "docs.js",
        "text/javascript",
        include_bytes!("assets/docs.js"),
    ),
    ("docs.css", "text/css", include_bytes!("assets/docs.css")),
    (
        "vendor/swagger-ui-bundle.js",
        "text/javascript",
        include_bytes!("assets/vendor/swagger-ui-bundle.js"),
    ),
    (
        "vendor/swagger-ui.css",
        "text/css",
        include_bytes!("assets/vendor/swagger-ui.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
];
const INDEX: &[u8] = include_bytes!("assets/index.html");
/// The API reference page (Swagger UI over `/api/v1/openapi.json`).
const DOCS: &[u8] = include_bytes!("assets/docs.html");

/// The page may run its own scripts and styles, call its own origin, and nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// [`CSP`], also letting the page call `origins` (the identity provider's token endpoint,
/// for signing in with it).
fn csp_with(origins: &[String]) -> HeaderValue {
    let extra: String = origins
        .iter()
        .filter(|o| {
            o.bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        })
        .map(|o| format!(" {o}"))
        .collect();
    HeaderValue::from_str(&CSP.replace("connect-src 'self'", &format!("connect-src 'self'{extra}")))
        .unwrap_or_else(|_| HeaderValue::from_static(CSP))
}

/// A strong ETag per asset (by path; "" is the page), computed once.
fn etag(path: &str) -> HeaderValue {
    static TAGS: OnceLock<Vec<(&'static str, HeaderValue)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(p, _, b)| (*p, *b))
            .chain([("", INDEX), ("docs", DOCS)])
            .map(|(p, b)| {
                let sum = Sha256::digest(b);
                let hex: String = sum[..12].iter().map(|x| format!("{x:02x}")).collect();
                let value = HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is ASCII");
                (p, value)
            })
            .collect()
    });
    tags.iter()
        .find(|(p, _)| *p == path)
        .map(|(_, v)| v.clone())
        .expect("every served path has a tag")
}

fn serve(
    request: &HeaderMap,
    path: &str,
    media_type: &'static str,
    bytes: &'static [u8],
    csp: HeaderValue,
) -> Response {
    let tag = etag(path);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Always revalidate: a new binary must never run with an old script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, tag.clone());
    if request.get(header::IF_NONE_MATCH) == Some(&tag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    (headers, bytes).into_response()
}

/// `GET /`: the dashboard's page, which may also call `connect` (the identity provider's
/// origins, when the dashboard signs in with one).
pub fn index(request: &HeaderMap, connect: &[String]) -> Response {
    serve(
        request,
        "",
        "text/html; charset=utf-8",
        INDEX,
        csp_with(connect),
    )
}

/// `GET /api/docs`: the API reference, offline (Swagger UI is embedded).
pub async fn docs(request: HeaderMap) -> Response {
    serve(
        &request,
        "docs",
        "text/html; charset=utf-8",
        DOCS,
        HeaderValue::from_static(CSP),
    )
}

/// `GET /assets/{*path}`: one embedded asset; 404 for anything else.
pub async fn asset(Path(path): Path<String>, request: HeaderMap) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((path, media_type, bytes)) => serve(
            &request,
            path,
            media_type,
            bytes,
            HeaderValue::from_static(CSP),
        ),
        // The API's error body, without borrowing the API's error type.
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "not_found", "message": "asset not found"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_lets_the_page_call_only_the_providers_origins() {
        let csp = csp_with(&[
            "https://idp.example".into(),
            "https://x; script-src *".into(),
        ]);
        let csp = csp.to_str().unwrap();
        assert!(
            csp.contains("connect-src 'self' https://idp.example;"),
            "{csp}"
        );
        assert!(!csp.contains("script-src *"), "{csp}");
        assert_eq!(csp_with(&[]).to_str().unwrap(), CSP);
    }

    #[test]
    fn every_asset_has_its_own_tag() {
        let mut tags: Vec<_> = ASSETS.iter().map(|(p, _, _)| etag(p)).collect();
        tags.push(etag(""));
        tags.push(etag("docs"));
        let n = tags.len();
        tags.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        tags.dedup();
        assert_eq!(tags.len(), n);
    }
}
