//! How a group post travels between shards (see `groups` for the rules):
//! the owner checks, numbers and records it, then once that record is
//! durable fans it out; each member shard records one copy, gives each
//! member a mailbox entry referring to it, and once durable confirms; a
//! member's acknowledgement (or expiry) releases its entry and tells the
//! author.

use storage::{EntryRecord, Post, Record};
use wire::{Chat, ErrorKind, GroupId, Phone, ReceiptKind};

use super::{
    durability::Refusal,
    groups::{author_of, post_bytes, Accepted, Author, GroupAction, Refan},
    ConnId, PeerMessage, RestoreError, Shard,
};

/// What the owner answers a request with: the post's `gseq`, or for a
/// creation the group's id.
fn answer(group: GroupId, action_creates: bool, gseq: u64) -> u64 {
    if action_creates {
        group.as_u64()
    } else {
        gseq
    }
}

impl Shard {
    // ---- the owner's side ----------------------------------------------------

    /// A phone's request reached the group's owner. Returns what its `Sent`
    /// carries; the caller holds that answer for the next commit.
    pub(super) fn group_request(
        &mut self,
        group: GroupId,
        (from, client_id): (Phone, u64),
        (at_ms, sender_since_ms): (u64, u64),
        action: GroupAction,
        session: ConnId,
    ) -> Result<u64, ErrorKind> {
        if self.durability.is_failed() {
            return Err(Refusal::Failed.kind());
        }
        let creates = matches!(action, GroupAction::Create { .. });
        if let Some(gseq) = self
            .groups
            .resent(group, (from, client_id), sender_since_ms)
        {
            self.counters.messages_deduplicated += 1;
            return Ok(answer(group, creates, gseq));
        }
        let chat = action.in_conversation().then_some(Chat::Group(group));
        self.admit_incoming(from, chat, client_id, session)?;
        let members_max = self.config.group_members_max;
        let times = (at_ms, self.now_ms);
        let Accepted {
            gseq,
            post,
            recipients,
        } = self
            .groups
            .accept((group, from, client_id), times, action, members_max)?;
        self.counters.group_posts += 1;
        self.durability.record(Record::GroupPost {
            group,
            gseq,
            post: post.clone(),
        });
        self.fan_out(group, gseq, post, &recipients, true);
        Ok(answer(group, creates, gseq))
    }

    /// `phone`'s account was deleted: it leaves every group this shard
    /// owns, each member told by a `Left` notice as if it had left.
    pub(super) fn leave_groups(&mut self, phone: Phone) {
        if self.durability.is_failed() {
            // Nothing can be recorded; the member stays, and the posts
            // that reach its shard find no account to store them for.
            return;
        }
        let at_ms = self.clock.wall_ms(self.now_ms);
        for group in self.groups.groups_of(phone) {
            let Some(accepted) = self.groups.remove_member(group, phone, at_ms) else {
                continue;
            };
            let Accepted {
                gseq,
                post,
                recipients,
            } = accepted;
            self.counters.group_posts += 1;
            self.counters.group_members_deleted += 1;
            self.durability.record(Record::GroupPost {
                group,
                gseq,
                post: post.clone(),
            });
            self.fan_out(group, gseq, post, &recipients, true);
        }
    }

    /// Sends a post to the shards of its recipients, one message per
    /// shard, and notes it as unconfirmed. `after_commit`: the post was
    /// recorded just now, so the copies wait for that record to be durable
    /// (else a restart could number another post the same).
    fn fan_out(
        &mut self,
        group: GroupId,
        gseq: u64,
        post: Post,
        recipients: &[Phone],
        after_commit: bool,
    ) {
        let mut shards = 0;
        for (dest, members) in self.split_by_dest(recipients.iter().copied()) {
            // A member whose home nobody knows cannot be written to; the
            // owner does not wait for it.
            let Some(dest) = dest else {
                self.counters.peer_messages_unroutable += 1;
                continue;
            };
            shards += 1;
            let message = PeerMessage::GroupFanout {
                group,
                gseq,
                post: post.clone(),
                members,
            };
            if after_commit {
                self.durability.hold_peer(dest, message);
            } else {
                self.route(dest, message);
            }
        }
        if shards > 0 {
            self.groups.fanned_out(group, gseq, post, shards);
        }
    }

    /// A shard confirmed that its copy of a post is durable.
    pub(super) fn group_stored(&mut self, group: GroupId, gseq: u64) {
        self.groups.confirmed(group, gseq);
    }

    // ---- the members' side ---------------------------------------------------

    /// A post for `members`, who live on this shard.
    pub(super) fn group_fanout(
        &mut self,
        group: GroupId,
        gseq: u64,
        post: Post,
        members: Vec<Phone>,
    ) {
        let owner = self.home_of_group(group);
        if self.groups.has_copy(group, gseq) {
            // Fanned out again after a restart: stored already.
            self.counters.group_copies_repeated += 1;
            self.owe(owner, PeerMessage::GroupStored { group, gseq });
            return;
        }
        if self.durability.is_failed() {
            // Not confirmed: the owner fans it out again after a restart.
            return;
        }
        self.durability.record(Record::GroupCopy {
            group,
            gseq,
            post: post.clone(),
        });
        self.counters.group_copies_stored += 1;
        // What every member's entry needs of the post, looked up once.
        let (body_bytes, author) = (post_bytes(&post), author_of(&post));
        self.groups.store_copy(group, gseq, post);
        let refs = members
            .into_iter()
            .filter(|&member| self.give_entry(member, (group, gseq), body_bytes, author))
            .count() as u32;
        self.groups.referenced(group, gseq, refs);
        self.counters.group_entries_stored += u64::from(refs);
        let confirm = PeerMessage::GroupStored { group, gseq };
        self.owe_after_commit(owner, confirm);
    }

    /// Gives `member` a mailbox entry for a post copied here; false when
    /// none was made. Group posts have bounds of their own in each member's
    /// mailbox: a group one was added to cannot make it refuse 1:1
    /// messages, nor hold more than `group_bytes_max` for it.
    fn give_entry(
        &mut self,
        member: Phone,
        (group, gseq): (GroupId, u64),
        body_bytes: usize,
        author: Option<Author>,
    ) -> bool {
        let (entries_max, bytes_max) = (self.config.group_entries_max, self.config.group_bytes_max);
        let room = self.accounts.get_mut(&member).map(|a| {
            let fits = a.mailbox.group_entries() < entries_max
                && a.mailbox.group_bytes() + body_bytes <= bytes_max;
            if fits {
                a.mailbox.group_entry_bytes(body_bytes);
            }
            fits
        });
        match room {
            Some(true) => {
                let entry = EntryRecord::Group { group, gseq };
                // A change (who joined, left, was added) is final on the
                // group's owner: a member whose entry a crash lost would
                // never learn it. So it is written through the write-back
                // cache; a message stays in the cache's documented loss
                // window.
                let seq = match author {
                    Some(_) => self.append(member, entry),
                    None => self.append_through(member, entry),
                };
                if let (Some(seq), Some(author)) = (seq, author) {
                    self.groups.readable(member, author, seq, self.now_ms);
                }
                true
            }
            Some(false) => {
                self.counters.group_entries_dropped_mailbox_full += 1;
                // Its author was answered `Sent`: it is told, never left
                // to believe the post arrived.
                if let Some(author) = author {
                    self.owe_receipt(author, member, ReceiptKind::Undeliverable);
                }
                false
            }
            // Added while not (or no longer) registered here.
            None => {
                self.counters.group_entries_no_account += 1;
                false
            }
        }
    }

    /// A member's entry for a post left its mailbox: acknowledged (the
    /// author hears `Delivered`), expired (`Expired`) or deleted with the
    /// account (`Undeliverable`). Returns the author the receipt is owed
    /// to; none for a change.
    pub(super) fn group_entry_released(
        &mut self,
        by: Phone,
        group: GroupId,
        gseq: u64,
        kind: ReceiptKind,
    ) -> Option<Author> {
        let expired = kind == ReceiptKind::Expired;
        let undelivered = kind != ReceiptKind::Delivered;
        let released = self.groups.released(by, (group, gseq), undelivered)?;
        if let Some(account) = self.accounts.get_mut(&by) {
            account.mailbox.group_entry_gone(released.body_bytes);
        }
        let author = released.author?;
        match kind {
            _ if expired => self.counters.messages_expired += 1,
            ReceiptKind::Undeliverable => self.counters.messages_undeliverable += 1,
            _ => self.counters.messages_acked += 1,
        }
        Some(author)
    }

    // ---- recovery ------------------------------------------------------------

    /// A replayed mailbox entry refers to a copy: it must have come before.
    pub(super) fn restore_group_entry(
        &mut self,
        member: Phone,
        group: GroupId,
        gseq: u64,
        seq: u64,
    ) -> Result<(), RestoreError> {
        let body_bytes = self
            .groups
            .restore_entry(member, (group, gseq), seq, self.now_ms)?;
        if let Some(account) = self.accounts.get_mut(&member) {
            account.mailbox.group_entry_bytes(body_bytes);
        }
        Ok(())
    }

    /// A replayed ack took `member`'s entry for a post away.
    pub(super) fn restore_group_ack(&mut self, member: Phone, group: GroupId, gseq: u64) {
        if let Some(body_bytes) = self.groups.restore_ack(member, (group, gseq)) {
            if let Some(account) = self.accounts.get_mut(&member) {
                account.mailbox.group_entry_gone(body_bytes);
            }
        }
    }

    /// The end of a restore: fans out again every post replayed on this
    /// owner.
    pub(super) fn groups_restored(&mut self) {
        for refan in self.groups.restored() {
            let Refan {
                group,
                gseq,
                post,
                recipients,
            } = refan;
            self.fan_out(group, gseq, post, &recipients, false);
        }
    }
}
