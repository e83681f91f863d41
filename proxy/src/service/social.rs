//! Friends and blocks: friend requests and their answers, `Block` and
//! `Unblock`, all written in the pair's shard (where direct sends and
//! friend requests are checked), and `ListBlocked`, read in the user's
//! shard. (`ListFriends` reads with the other user-wide reads, in
//! `user.rs`.)

use super::*;

impl<B: Backend> ImstoreService<B> {
    /// A friend command (`rpc`), as `command` makes it of the request's
    /// `user` and `other`.
    pub(super) async fn friend_rpc(
        &self,
        rpc: &'static str,
        request: Request<pb::FriendPairRequest>,
        command: impl FnOnce(u64, u64) -> Command,
    ) -> Result<Response<pb::FriendResponse>, Status> {
        let r = request.into_inner();
        let command = command(r.user, r.other);
        self.observe(rpc, async {
            match self.write(command).await? {
                Outcome::Friend(o) => Ok(friend_outcome(o)),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    pub(super) async fn block_rpc(
        &self,
        request: Request<pb::BlockRequest>,
        block: bool,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let (rpc, command) = if block {
            let command = Command::Block {
                user: r.user,
                other: r.other,
                timestamp_ms: now_ms(),
            };
            ("Block", command)
        } else {
            let command = Command::Unblock {
                user: r.user,
                other: r.other,
            };
            ("Unblock", command)
        };
        self.observe(rpc, async {
            self.write(command).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    pub(super) async fn list_blocked_rpc(
        &self,
        request: Request<pb::ListBlockedRequest>,
    ) -> Result<Response<pb::ListBlockedResponse>, Status> {
        let r = request.into_inner();
        self.observe("ListBlocked", async {
            let n = limit(r.limit)?;
            let query = ShardQuery::Blocked {
                user: r.user,
                after: r.after_user,
                limit: n,
            };
            let ShardAnswer::Blocked(page) = self
                .ask(Route::Shard(self.user_shard(r.user)), false, query)
                .await?
            else {
                return Err(mismatched());
            };
            Ok(pb::ListBlockedResponse {
                blocked: page
                    .into_iter()
                    .map(|b| pb::BlockedUser {
                        user: b.user,
                        since_ms: b.since_ms,
                    })
                    .collect(),
            })
        })
        .await
    }
}
