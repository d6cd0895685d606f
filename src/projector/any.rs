//! Projections and projectors without their event type, so that read models of different
//! event types sit in one list ([`crate::projections::roster`]) that the daemon,
//! `orrery rebuild` and the bench all take.

use std::time::Duration;

use async_nats::jetstream;
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Progress, Projection, Projector, ProjectorError, Table};
use crate::bus::streams::StreamSpec;
use crate::db::WriterDemand;

/// A read model of any event type.
pub trait AnyProjection: Send + Sync {
    /// The stream it consumes.
    fn stream(&self) -> StreamSpec;

    /// A projector for it, resuming from its stored checkpoint.
    fn projector(
        self: Box<Self>,
        js: jetstream::Context,
        writer: SqlitePool,
        demand: WriterDemand,
        batch_size: usize,
        batch_wait: Duration,
    ) -> BoxFuture<'static, sqlx::Result<Box<dyn Drive>>>;

    /// Deletes its rows, dead letters and checkpoint (see [`super::reset`]).
    fn reset<'a>(&'a self, writer: &'a SqlitePool) -> BoxFuture<'a, sqlx::Result<()>>;

    /// Its tables as `orrery digest` hashes them.
    fn tables(&self) -> &'static [Table];
}

impl<P: Projection> AnyProjection for P {
    fn stream(&self) -> StreamSpec {
        Projection::stream(self)
    }

    fn projector(
        self: Box<Self>,
        js: jetstream::Context,
        writer: SqlitePool,
        demand: WriterDemand,
        batch_size: usize,
        batch_wait: Duration,
    ) -> BoxFuture<'static, sqlx::Result<Box<dyn Drive>>> {
        async move {
            let projector = Projector::new(*self, js, writer, batch_size, batch_wait)
                .await?
                .sharing_demand(demand);
            Ok(Box::new(projector) as Box<dyn Drive>)
        }
        .boxed()
    }

    fn reset<'a>(&'a self, writer: &'a SqlitePool) -> BoxFuture<'a, sqlx::Result<()>> {
        super::reset(self, writer).boxed()
    }

    fn tables(&self) -> &'static [Table] {
        Projection::tables(self)
    }
}

/// A projector of any read model: its single step, its loop and its progress.
pub trait Drive: Send {
    /// The stream it consumes.
    fn stream(&self) -> StreamSpec;

    /// A handle that follows its checkpoint.
    fn progress(&self) -> Progress;

    /// The last committed stream sequence.
    fn checkpoint(&self) -> u64;

    /// [`Projector::project_next_batch`].
    fn step<'a>(
        &'a mut self,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Outcome, ProjectorError>>;

    /// [`Projector::run`].
    fn run(self: Box<Self>, cancel: CancellationToken) -> BoxFuture<'static, ()>;
}

impl<P: Projection> Drive for Projector<P> {
    fn stream(&self) -> StreamSpec {
        self.shared.stream
    }

    fn progress(&self) -> Progress {
        Projector::progress(self)
    }

    fn checkpoint(&self) -> u64 {
        Projector::checkpoint(self)
    }

    fn step<'a>(
        &'a mut self,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Outcome, ProjectorError>> {
        self.project_next_batch(cancel).boxed()
    }

    fn run(self: Box<Self>, cancel: CancellationToken) -> BoxFuture<'static, ()> {
        Projector::run(*self, cancel).boxed()
    }
}
