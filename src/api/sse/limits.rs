//! Who may hold a live stream: single-use tickets for EventSource URLs, and caps on
//! concurrent streams per user and in all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::error::{ApiError, ApiResult};
use crate::token::Claims;

/// How long an SSE ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Most tickets outstanding at once.
const MAX_TICKETS: usize = 100_000;

/// Single-use, short-lived credentials for EventSource URLs.
pub struct Tickets {
    issued: Mutex<HashMap<String, (Claims, Instant)>>,
    ttl: Duration,
}

impl Default for Tickets {
    fn default() -> Self {
        Self::with_ttl(TICKET_TTL)
    }
}

impl Tickets {
    /// Tickets valid for `ttl` (the API uses [`TICKET_TTL`]).
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            issued: Mutex::default(),
            ttl,
        }
    }

    /// Issues a ticket standing for `claims`.
    pub fn issue(&self, claims: Claims) -> ApiResult<String> {
        let mut issued = crate::sync::lock(&self.issued);
        let now = Instant::now();
        let ttl = self.ttl;
        issued.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        if issued.len() >= MAX_TICKETS {
            return Err(ApiError::Busy("too many outstanding tickets".into()));
        }
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        issued.insert(ticket.clone(), (claims, now));
        Ok(ticket)
    }

    /// Redeems a ticket once; `None` when unknown, used or expired.
    pub fn redeem(&self, ticket: &str) -> Option<Claims> {
        let (claims, at) = crate::sync::lock(&self.issued).remove(ticket)?;
        (at.elapsed() < self.ttl).then_some(claims)
    }
}

/// Caps on concurrent streams, per user and in all.
pub struct StreamLimits {
    per_user: usize,
    total: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// Holds one stream's place under the caps; released on drop.
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    user: String,
}

impl StreamLimits {
    /// Limits of `per_user` streams per `sub` and `total` in all.
    pub fn new(per_user: usize, total: usize) -> Self {
        Self {
            per_user,
            total,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// Takes a place for `user`: 429 past the user's cap, 503 past the total.
    pub fn acquire(self: &Arc<Self>, user: &str) -> ApiResult<StreamSlot> {
        let mut open = crate::sync::lock(&self.open);
        if open.0 >= self.total {
            return Err(ApiError::Busy(
                "the server holds as many streams as it is allowed".into(),
            ));
        }
        let mine = open.1.entry(user.to_owned()).or_insert(0);
        if *mine >= self.per_user {
            return Err(ApiError::TooMany(format!(
                "at most {} concurrent streams per user",
                self.per_user
            )));
        }
        *mine += 1;
        open.0 += 1;
        Ok(StreamSlot {
            limits: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        crate::sync::lock(&self.open).0
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = crate::sync::lock(&self.limits.open);
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Role;

    fn claims(sub: &str) -> Claims {
        Claims::new(sub, Role::Viewer, u64::MAX)
    }

    #[test]
    fn tickets_are_single_use_and_expire() {
        let tickets = Tickets::with_ttl(Duration::from_millis(50));
        let t = tickets.issue(claims("a")).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(tickets.redeem(&t).unwrap().sub, "a");
        assert!(tickets.redeem(&t).is_none(), "second use");
        let old = tickets.issue(claims("b")).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(tickets.redeem(&old).is_none(), "expired");
        assert!(tickets.redeem("made-up").is_none());
    }

    #[test]
    fn stream_limits_count_per_user_and_in_all() {
        let limits = Arc::new(StreamLimits::new(2, 3));
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        assert!(matches!(limits.acquire("a"), Err(ApiError::TooMany(_))));
        let _b1 = limits.acquire("b").unwrap();
        assert!(matches!(limits.acquire("c"), Err(ApiError::Busy(_))));
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.acquire("a").unwrap();
    }
}
