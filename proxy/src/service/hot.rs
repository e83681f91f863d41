//! `HotConversations`: the most read and most written conversations this
//! server saw (`crate::hot`).

use super::*;

/// Most conversations per list.
const MOST: u32 = crate::hot::COUNTERS as u32;

fn to_message(hot: crate::hot::Hot) -> pb::HotConversation {
    pb::HotConversation {
        conversation: hot.conversation,
        count: hot.count,
        error: hot.error,
    }
}

impl<B: Backend> ImstoreService<B> {
    pub(super) async fn hot_conversations_rpc(
        &self,
        request: Request<pb::HotConversationsRequest>,
    ) -> Result<Response<pb::HotConversationsResponse>, Status> {
        let limit = request.into_inner().limit;
        self.observe("HotConversations", async {
            if limit == 0 || limit > MOST {
                return Err(invalid(format!("limit must be 1 to {MOST}, not {limit}")));
            }
            let (reads, writes) = self.metrics.hot.top(limit as usize);
            Ok(pb::HotConversationsResponse {
                reads: reads.into_iter().map(to_message).collect(),
                writes: writes.into_iter().map(to_message).collect(),
            })
        })
        .await
    }
}
