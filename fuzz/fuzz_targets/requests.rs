//! What a request carries besides its body: query strings, `Orrery-Min-Seq`, `Last-Event-ID`,
//! times and durations, bearer tokens; and the redaction of any text. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orrery::api::extract::Params;
use orrery::config::Secret;
use orrery::token::Authenticator;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let params = Params::parse(Some(text));
    for name in ["limit", "since", "stale", "kind", "cursor", "project_id", "window"] {
        let _ = params.get(name);
        let _ = params.token(name);
        let _ = params.bool(name);
        let _ = params.int(name, 1, 500, 50);
    }
    let _ = params.window_start();
    let _ = orrery::api::consistency::parse(text);
    let _ = orrery::live::parse_event_id(text);
    let _ = orrery::window::parse_duration(text);
    let _ = orrery::window::parse_rfc3339_ms(text);
    let secret = Secret::new("fuzz-secret-fuzz-secret-fuzz-secret-fuzz");
    let auth = Authenticator::new(Some(&secret));
    let _ = auth.verify(text);
    let _ = auth.verify_login(text);
    let _ = orrery::redact::redact(text);
});
