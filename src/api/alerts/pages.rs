//! Pages of recurrence groups, kept while nothing they are made of has changed.
//!
//! A page is a pure function of the query and the ALERTS and RESULTS read models (runs are
//! linked by both projections), and every commit moves one of their checkpoints. So a page
//! read after this replica had committed ALERTS to `a` and RESULTS to `r` can answer every
//! request that finds the same `(a, r)`: the checkpoints are read before the page, and a
//! commit is published only once it is visible to readers, so the page is never older
//! than its stamp (a newer one is harmless: the next request sees a new stamp and re-reads).
//! Dashboards poll the same few pages; between two commits each is read once, and requests
//! arriving while it is read wait for that read instead of starting their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::queries::{recurrence_page, Filters, PageGroup};
use crate::api::error::ApiResult;
use crate::api::AppState;
use crate::bus::streams;

/// Most pages kept (a page of 300 groups is about half a MiB).
pub const MAX_PAGES: usize = 32;

/// A page of groups, shared by the requests that read it.
pub(super) type Page = Arc<Vec<PageGroup>>;

/// The ALERTS and RESULTS checkpoints a page was read at, and the pruner's generation
/// (pruning removes groups without moving a checkpoint).
type Stamp = (u64, u64, u64);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    project_id: Option<String>,
    provider: Option<String>,
    /// The caller's projects: tokens of different scopes never share a page.
    scope: Option<Vec<String>>,
    limit: i64,
}

struct Slot {
    stamp: Stamp,
    page: Arc<OnceCell<Page>>,
}

/// Recurrence pages by query, each valid at one stamp.
#[derive(Default)]
pub struct PageCache {
    slots: Mutex<HashMap<Key, Slot>>,
}

impl PageCache {
    /// The `limit` latest groups matching `filters`, read now or shared from a read at the
    /// same checkpoints.
    pub(super) async fn page(
        &self,
        state: &AppState,
        filters: &Filters<'_>,
        limit: i64,
    ) -> ApiResult<Page> {
        let checkpoint = |stream| {
            state
                .projections
                .iter()
                .find(|p| p.stream == stream)
                .map(|p| *p.checkpoint.borrow())
        };
        let (Some(alerts), Some(results)) =
            (checkpoint(streams::ALERTS), checkpoint(streams::RESULTS))
        else {
            return Ok(Arc::new(
                recurrence_page(&state.db.readers, filters, limit).await?,
            ));
        };
        let stamp = (alerts, results, state.pruning.generation());
        let key = Key {
            project_id: filters.project_id().map(str::to_owned),
            provider: filters.provider().map(str::to_owned),
            scope: filters.scope().map(<[String]>::to_vec),
            limit,
        };
        let cell = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(&key) {
                Some(slot) if slot.stamp == stamp => Arc::clone(&slot.page),
                _ => {
                    if slots.len() >= MAX_PAGES && !slots.contains_key(&key) {
                        // Pages of older stamps go first; past that, start over.
                        slots.retain(|_, s| s.stamp == stamp);
                        if slots.len() >= MAX_PAGES {
                            slots.clear();
                        }
                    }
                    let page = Arc::new(OnceCell::new());
                    slots.insert(
                        key,
                        Slot {
                            stamp,
                            page: Arc::clone(&page),
                        },
                    );
                    page
                }
            }
        };
        let page = cell
            .get_or_try_init(|| async {
                Ok::<_, crate::api::error::ApiError>(Arc::new(
                    recurrence_page(&state.db.readers, filters, limit).await?,
                ))
            })
            .await?;
        Ok(Arc::clone(page))
    }
}
