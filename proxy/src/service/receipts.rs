//! Receipts: `GetReceipts` (the lists whole, as before paging existed, or
//! counts only, or a page of the lists by user id) and `GetReceiptCounts`
//! (the counts of up to 100 messages from one pass over the members), each
//! asked of the conversation's shard.

use imstore_engine::ReceiptPage;

use super::*;

fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<B: Backend> ImstoreService<B> {
    pub(super) async fn get_receipts_rpc(
        &self,
        request: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let r = request.into_inner();
        self.observe("GetReceipts", async {
            let route = Route::Conversation(r.conversation);
            if !r.counts_only && r.after_user == 0 && r.limit == 0 {
                // Both lists whole: the query every release answers.
                let query = ShardQuery::Receipts {
                    conversation: r.conversation,
                    seq: r.seq,
                };
                let ShardAnswer::Receipts(receipts) = self.ask(route, false, query).await? else {
                    return Err(mismatched());
                };
                return Ok(pb::GetReceiptsResponse {
                    read_count: count(receipts.read.len() as u64),
                    unread_count: count(receipts.unread.len() as u64),
                    read: receipts.read,
                    unread: receipts.unread,
                    stored: receipts.stored,
                    next_after_user: 0,
                });
            }
            let max = self.limits.max_page_messages;
            if usize::try_from(r.limit).map_or(true, |n| n > max) {
                return Err(invalid(format!(
                    "a page of at most {max} users, not {}",
                    r.limit
                )));
            }
            let lists = (!r.counts_only).then(|| {
                let n = if r.limit == 0 { u32::MAX } else { r.limit };
                (r.after_user, n)
            });
            let mut pages = self
                .receipt_pages(r.conversation, vec![r.seq], lists)
                .await?;
            let page = pages.pop().ok_or_else(mismatched)?;
            Ok(pb::GetReceiptsResponse {
                read_count: count(page.read_count),
                unread_count: count(page.unread_count),
                read: page.read,
                unread: page.unread,
                stored: page.stored,
                next_after_user: page.next_after,
            })
        })
        .await
    }

    pub(super) async fn get_receipt_counts_rpc(
        &self,
        request: Request<pb::GetReceiptCountsRequest>,
    ) -> Result<Response<pb::GetReceiptCountsResponse>, Status> {
        let r = request.into_inner();
        self.observe("GetReceiptCounts", async {
            let max = imstore_engine::MAX_RECEIPT_MESSAGES;
            if r.seqs.is_empty() || r.seqs.len() > max {
                return Err(invalid(format!(
                    "receipt counts of 1 to {max} messages at a time, not {}",
                    r.seqs.len()
                )));
            }
            let pages = self.receipt_pages(r.conversation, r.seqs, None).await?;
            Ok(pb::GetReceiptCountsResponse {
                counts: pages
                    .into_iter()
                    .map(|p| pb::ReceiptCount {
                        seq: p.seq,
                        read_count: count(p.read_count),
                        unread_count: count(p.unread_count),
                        stored: p.stored,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn receipt_pages(
        &self,
        conversation: u64,
        seqs: Vec<u64>,
        lists: Option<(u64, u32)>,
    ) -> Result<Vec<ReceiptPage>, Status> {
        let query = ShardQuery::ReceiptPages {
            conversation,
            seqs,
            lists,
        };
        match self
            .ask(Route::Conversation(conversation), false, query)
            .await?
        {
            ShardAnswer::ReceiptPages(pages) => Ok(pages),
            _ => Err(mismatched()),
        }
    }
}
