//! `ReadAsMany`: several conversations read as one member sees them, in
//! one call. Each page is one `ReadAs` query to its conversation's shard,
//! all asked at once; a page that fails is answered with its error and
//! the others go on.

use imstore_engine::{ShardAnswer, ShardQuery};
use imstore_proto::v1 as pb;
use tonic::Status;

use super::{bounded, stream, ImstoreService};
use crate::convert::{direction, limit, message, mismatched};
use crate::error::invalid;
use crate::{Backend, Route};

/// Most pages in one `ReadAsMany`.
pub const MAX_READ_AS_PAGES: usize = 100;

impl<B: Backend> ImstoreService<B> {
    /// The pages of `r`, in request order, after the call's limits: at
    /// most [`MAX_READ_AS_PAGES`], and their limits together at most the
    /// server's page limit.
    pub(super) async fn read_pages(
        &self,
        r: pb::ReadAsManyRequest,
    ) -> Result<pb::ReadAsManyResponse, Status> {
        if r.pages.len() > MAX_READ_AS_PAGES {
            return Err(invalid(format!(
                "{} pages in one ReadAsMany; at most {MAX_READ_AS_PAGES}",
                r.pages.len()
            )));
        }
        let asked: u64 = r.pages.iter().map(|p| u64::from(p.limit)).sum();
        if asked > self.limits.max_page_messages as u64 {
            return Err(invalid(format!(
                "the pages ask for {asked} messages together; at most {}",
                self.limits.max_page_messages
            )));
        }
        let (viewer, stale_ok) = (r.viewer, r.stale_ok);
        let pages = r.pages.into_iter().map(|page| async move {
            let conversation = page.conversation;
            (conversation, self.read_views(viewer, stale_ok, page).await)
        });
        // The answer as a whole stays within the byte bound: each page in
        // request order gets what the ones before it left (a page past it
        // comes back empty, with `more`), and the first message of the
        // answer comes whatever its size, so that reading on progresses.
        let mut left = self.limits.max_page_bytes;
        let mut answered = Vec::with_capacity(MAX_READ_AS_PAGES);
        let mut any_kept = false;
        for (conversation, read) in futures_util::future::join_all(pages).await {
            let result = match read {
                Ok((mut messages, direction)) => {
                    let floor = usize::from(!any_kept);
                    let (more, used) =
                        bounded::bound_messages(&mut messages, direction, left, floor);
                    any_kept |= !messages.is_empty();
                    left = left.saturating_sub(used);
                    pb::page_result::Result::Page(pb::ReadResponse { messages, more })
                }
                Err(status) => pb::page_result::Result::Error(stream::stream_error(&status)),
            };
            answered.push(pb::PageResult {
                conversation,
                result: Some(result),
            });
        }
        Ok(pb::ReadAsManyResponse { pages: answered })
    }

    /// One page as `viewer` sees it, cut at the byte bound: what `ReadAs`
    /// answers.
    pub(super) async fn read_page(
        &self,
        viewer: u64,
        stale_ok: bool,
        page: pb::ReadAsPage,
    ) -> Result<pb::ReadResponse, Status> {
        let (mut messages, direction) = self.read_views(viewer, stale_ok, page).await?;
        let (more, _) =
            bounded::bound_messages(&mut messages, direction, self.limits.max_page_bytes, 1);
        Ok(pb::ReadResponse { messages, more })
    }

    /// One page as `viewer` sees it, whole, and the direction it was read
    /// in.
    async fn read_views(
        &self,
        viewer: u64,
        stale_ok: bool,
        page: pb::ReadAsPage,
    ) -> Result<(Vec<pb::Message>, imstore_engine::Direction), Status> {
        let (dir, n) = (direction(page.direction)?, limit(page.limit)?);
        let query = ShardQuery::ReadAs {
            viewer,
            conversation: page.conversation,
            from: page.from,
            limit: n,
            direction: dir,
        };
        match self
            .ask(Route::Conversation(page.conversation), stale_ok, query)
            .await?
        {
            ShardAnswer::Views(views) => Ok((views.into_iter().map(message).collect(), dir)),
            _ => Err(mismatched()),
        }
    }
}
