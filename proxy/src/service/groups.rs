//! Groups and direct conversations: creating and opening them, membership
//! changes and the member list, each in the conversation's shard.

use super::*;

impl<B: Backend> ImstoreService<B> {
    /// A write answered with the conversation it made or found.
    async fn conversation(&self, command: Command) -> Result<pb::ConversationResponse, Status> {
        match self.write(command).await? {
            Outcome::Conversation {
                conversation,
                created,
            } => Ok(pb::ConversationResponse {
                conversation,
                created,
            }),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn create_group_rpc(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::ConversationResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "CreateGroup",
            self.conversation(Command::CreateGroup {
                conversation: r.conversation,
                owner: r.owner,
                members: r.members,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    pub(super) async fn open_direct_rpc(
        &self,
        request: Request<pb::OpenDirectRequest>,
    ) -> Result<Response<pb::ConversationResponse>, Status> {
        let r = request.into_inner();
        self.observe(
            "OpenDirect",
            self.conversation(Command::OpenDirect {
                user: r.user,
                peer: r.peer,
                timestamp_ms: now_ms(),
            }),
        )
        .await
    }

    /// `AddMembers` or `RemoveMembers` (`rpc`), as `command` makes it of
    /// the request.
    pub(super) async fn members_rpc(
        &self,
        rpc: &'static str,
        request: Request<pb::MembersRequest>,
        command: impl FnOnce(pb::MembersRequest) -> Command,
    ) -> Result<Response<pb::MembersChangedResponse>, Status> {
        let command = command(request.into_inner());
        self.observe(rpc, async {
            match self.write(command).await? {
                Outcome::MembersChanged(changed) => Ok(pb::MembersChangedResponse { changed }),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    pub(super) async fn list_members_rpc(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let r = request.into_inner();
        self.observe("ListMembers", async {
            let n = limit(r.limit)?;
            let query = ShardQuery::Members {
                conversation: r.conversation,
                after: r.after_user,
                limit: n,
            };
            let ShardAnswer::Members { members, count } = self
                .ask(Route::Conversation(r.conversation), false, query)
                .await?
            else {
                return Err(mismatched());
            };
            Ok(pb::ListMembersResponse {
                members: members
                    .into_iter()
                    .map(|m| pb::Member {
                        user: m.user,
                        read_seq: m.read_seq,
                        joined_after: m.intervals.last().map_or(0, |i| i.0),
                    })
                    .collect(),
                member_count: count,
            })
        })
        .await
    }
}
