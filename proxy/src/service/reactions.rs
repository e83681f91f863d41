//! Reactions: `React` and `Unreact` (written in the conversation's shard)
//! and `ListReactors`; reads show each message's counts through
//! `convert::message`.

use super::*;

impl<B: Backend> ImstoreService<B> {
    pub(super) async fn react_rpc(
        &self,
        request: Request<pb::ReactRequest>,
        add: bool,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let command = Command::React {
            conversation: r.conversation,
            seq: r.seq,
            user: r.user,
            reaction: r.reaction,
            add,
        };
        self.observe(if add { "React" } else { "Unreact" }, async {
            self.write(command).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    pub(super) async fn list_reactors_rpc(
        &self,
        request: Request<pb::ListReactorsRequest>,
    ) -> Result<Response<pb::ListReactorsResponse>, Status> {
        let r = request.into_inner();
        self.observe("ListReactors", async {
            let query = ShardQuery::Reactors {
                conversation: r.conversation,
                seq: r.seq,
                reaction: r.reaction,
                after: r.after_user,
                limit: limit(r.limit)?,
            };
            let ShardAnswer::Users(users) = self
                .ask(Route::Conversation(r.conversation), false, query)
                .await?
            else {
                return Err(mismatched());
            };
            Ok(pb::ListReactorsResponse { users })
        })
        .await
    }
}
