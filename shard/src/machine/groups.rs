//! Groups, in two halves.
//!
//! The owner (the shard a group's id hashes to) keeps the group: members,
//! admins, subject and the sequence of its posts. A post (a message or a
//! change) is checked against the membership at that moment, numbered
//! (`gseq`), recorded with its body as a `GroupPost`, and once that record
//! is durable fanned out: one `GroupFanout` per shard with members, naming
//! the members there. The sender's `Sent` waits for the same commit.
//!
//! A member shard stores each post once (`GroupCopy`) and gives each of its
//! members a mailbox entry that refers to it (`EntryRecord::Group`), so
//! group posts reach phones by the same path, order and acks as 1:1
//! messages. It confirms the copy to the owner after its own commit. Posts
//! the owner has not seen confirmed by every shard are in its checkpoint
//! and are fanned out again after a restart; a shard recognises a post it
//! already has by the group's mark (posts arrive in `gseq` order).

use std::collections::{BTreeMap, VecDeque};

use ahash::AHashMap;
use storage::{Post, Record};
use wire::{ErrorKind, GroupChange, GroupId, Phone, GROUP_SUBJECT_BYTES_MAX, SERVER_CLIENT_ID};

use super::RestoreError;
use crate::dedup::DedupTable;

/// A group on its owning shard.
#[derive(Debug)]
struct Group {
    subject: String,
    /// Members and whether each is an admin. Ordered, so that checkpoints
    /// and the last-admin rule are deterministic.
    members: BTreeMap<Phone, bool>,
    next_gseq: u64,
    /// Posts fanned out whose copies not every shard has confirmed, in
    /// `gseq` order.
    unconfirmed: VecDeque<Unconfirmed>,
}

#[derive(Debug)]
struct Unconfirmed {
    gseq: u64,
    post: Post,
    shards_left: u16,
}

/// A post as a member shard holds it, with the number of its members'
/// mailbox entries that still refer to it.
#[derive(Debug)]
struct PostCopy {
    post: Post,
    refs: u32,
}

/// What a phone asked of a group, on its way to the group's owner.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum GroupAction {
    Create {
        subject: String,
        members: Vec<Phone>,
    },
    Send {
        body: std::sync::Arc<[u8]>,
    },
    Change(GroupChange),
}

impl GroupAction {
    /// The numbers this request would make members, `by` aside, sorted
    /// and without repeats.
    pub(super) fn joining(&self, by: Phone) -> Vec<Phone> {
        let named = match self {
            GroupAction::Create { members, .. } => members.clone(),
            GroupAction::Change(GroupChange::Added(phones)) => phones.clone(),
            _ => Vec::new(),
        };
        let mut joining: Vec<Phone> = named.into_iter().filter(|&p| p != by).collect();
        joining.sort_unstable();
        joining.dedup();
        joining
    }

    /// Whether the request belongs to its sender's conversation in the
    /// group, whose order holds across refusals (see `order`): posts and
    /// changes do; a creation starts the group, so nothing precedes it.
    pub(super) fn in_conversation(&self) -> bool {
        !matches!(self, GroupAction::Create { .. })
    }
}

impl Group {
    fn new() -> Group {
        Group {
            subject: String::new(),
            members: BTreeMap::new(),
            next_gseq: 1,
            unconfirmed: VecDeque::new(),
        }
    }

    /// Whether `by` may make `change` in a group of at most `members_max`.
    fn check(&self, by: Phone, change: &GroupChange, members_max: usize) -> Result<(), ErrorKind> {
        let by_admin = *self.members.get(&by).ok_or(ErrorKind::NotGroupMember)?;
        let admin_only = !matches!(change, GroupChange::Left);
        if admin_only && !by_admin {
            return Err(ErrorKind::NotGroupAdmin);
        }
        let valid = match change {
            GroupChange::Created { .. } => false,
            GroupChange::Left => true,
            GroupChange::Added(phones) => {
                let mut new: Vec<Phone> = phones.clone();
                new.sort_unstable();
                new.dedup();
                if self.members.len() + new.len() > members_max {
                    return Err(ErrorKind::GroupFull);
                }
                !new.is_empty() && new.iter().all(|p| !self.members.contains_key(p))
            }
            GroupChange::Removed(phone) => *phone != by && self.members.contains_key(phone),
            GroupChange::Promoted(phone) => self.members.get(phone) == Some(&false),
            GroupChange::Demoted(phone) => {
                // A group always keeps an admin: the last one cannot be
                // demoted (leaving hands the role on instead).
                let admins = self.members.values().filter(|admin| **admin).count();
                self.members.get(phone) == Some(&true) && admins > 1
            }
            GroupChange::Subject(subject) => subject.len() <= GROUP_SUBJECT_BYTES_MAX,
        };
        if valid {
            Ok(())
        } else {
            Err(ErrorKind::BadRequest)
        }
    }

    /// Applies a post to the group and returns who receives it: for a
    /// message every member but its sender, for a change the members after
    /// it, and for a removal also the member it removes.
    fn apply(&mut self, post: &Post) -> Vec<Phone> {
        let Post::Change { by, change, .. } = post else {
            return self.recipients_now(post);
        };
        let mut gone = None;
        match change {
            GroupChange::Created { subject, members } => {
                self.subject.clone_from(subject);
                self.members = members.iter().map(|&p| (p, p == *by)).collect();
            }
            GroupChange::Added(phones) => {
                for &phone in phones {
                    self.members.entry(phone).or_insert(false);
                }
            }
            GroupChange::Removed(phone) => gone = Some(*phone),
            GroupChange::Left => gone = Some(*by),
            GroupChange::Promoted(phone) | GroupChange::Demoted(phone) => {
                if let Some(admin) = self.members.get_mut(phone) {
                    *admin = matches!(change, GroupChange::Promoted(_));
                }
            }
            GroupChange::Subject(subject) => self.subject.clone_from(subject),
        }
        let recipients: Vec<Phone> = self.members.keys().copied().collect();
        if let Some(gone) = gone {
            self.members.remove(&gone);
            if !self.members.values().any(|admin| *admin) {
                if let Some(first) = self.members.values_mut().next() {
                    *first = true;
                }
            }
        }
        recipients
    }

    /// Who a post that was already applied goes to when it is fanned out
    /// again after a restart: today's members, and whoever it removed.
    fn recipients_now(&self, post: &Post) -> Vec<Phone> {
        let members = self.members.keys().copied();
        match post {
            Post::Message { from, .. } => members.filter(|p| p != from).collect(),
            Post::Change { by, change, .. } => {
                let mut recipients: Vec<Phone> = members.collect();
                let gone = match change {
                    GroupChange::Removed(phone) => Some(*phone),
                    GroupChange::Left => Some(*by),
                    _ => None,
                };
                // Unless they have been added back since.
                if let Some(gone) = gone.filter(|p| !self.members.contains_key(p)) {
                    recipients.push(gone);
                }
                recipients
            }
        }
    }
}

/// A post the owner accepted: its number, the post as recorded, and who
/// receives it.
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) gseq: u64,
    pub(super) post: Post,
    pub(super) recipients: Vec<Phone>,
}

/// A post replayed on its owner, fanned out again when the restore ends.
#[derive(Debug)]
pub(super) struct Refan {
    pub(super) group: GroupId,
    pub(super) gseq: u64,
    pub(super) post: Post,
    pub(super) recipients: Vec<Phone>,
}

/// A member's entry for a post left its mailbox: the bytes it stood for
/// and, for a message, its author and client id (who gets the receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Released {
    pub(super) body_bytes: usize,
    pub(super) author: Option<Author>,
}

/// Who wrote a group message, its client id and when it was sent (Unix
/// ms): what its receipts carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Author {
    pub(super) from: Phone,
    pub(super) client_id: u64,
    pub(super) sent_at_ms: u64,
}

/// The groups part of a shard: the groups it owns (the owner's half) and
/// the post copies it holds for its members (the members' half).
#[derive(Debug)]
pub(super) struct Groups {
    /// Groups this shard owns.
    owned: AHashMap<GroupId, Group>,
    /// Their recent posts by `(group, author, client_id)`, for resend
    /// detection.
    dedup: DedupTable<GroupId>,
    /// Group posts delivered to members of this shard, by `(member,
    /// author, client_id)`, for the read-receipt rule; 1:1 messages use
    /// the shard's own table for the same.
    reads: DedupTable<Phone>,
    /// Posts held here for members of this shard, and how far each group's
    /// posts have arrived.
    copies: AHashMap<(GroupId, u64), PostCopy>,
    marks: AHashMap<GroupId, u64>,
    /// Posts replayed on their owner, fanned out again when the restore
    /// ends.
    refan: Vec<Refan>,
}

impl Groups {
    /// Empty, with resend and read tables of `dedup_ttl_ms` and at most
    /// `dedup_entries_max` entries each.
    pub(super) fn new(dedup_ttl_ms: u64, dedup_entries_max: usize) -> Groups {
        Groups {
            owned: AHashMap::new(),
            dedup: DedupTable::new(dedup_ttl_ms, dedup_entries_max),
            reads: DedupTable::new(dedup_ttl_ms, dedup_entries_max),
            copies: AHashMap::new(),
            marks: AHashMap::new(),
            refan: Vec::new(),
        }
    }

    /// Groups this shard owns.
    pub(super) fn owned(&self) -> usize {
        self.owned.len()
    }

    /// The members of a group this shard owns, but `phone`; `None` when
    /// there is no such group or `phone` is not a member.
    pub(super) fn members_except(&self, group: GroupId, phone: Phone) -> Option<Vec<Phone>> {
        let state = self.owned.get(&group)?;
        if !state.members.contains_key(&phone) {
            return None;
        }
        let others = state.members.keys().copied().filter(|&m| m != phone);
        Some(others.collect())
    }

    // ---- the owner's half ------------------------------------------------------

    /// The number the post `client_id` of `from` got, if it is a resend
    /// (not a post of a deleted account that held the number before the
    /// one created at `since_ms`).
    pub(super) fn resent(
        &mut self,
        group: GroupId,
        (from, client_id): (Phone, u64),
        since_ms: u64,
    ) -> Option<u64> {
        self.dedup.get_since(group, from, client_id, since_ms)
    }

    /// Checks a request against the group as it stands (or creates it),
    /// applies it and numbers it. Err: why it does not apply; nothing
    /// changed then.
    pub(super) fn accept(
        &mut self,
        (group, from, client_id): (GroupId, Phone, u64),
        (at_ms, now_ms): (u64, u64),
        action: GroupAction,
        members_max: usize,
    ) -> Result<Accepted, ErrorKind> {
        let post = match action {
            GroupAction::Create { subject, members } => {
                let members = self.create(group, from, &subject, members, members_max)?;
                Post::Change {
                    by: from,
                    client_id,
                    at_ms,
                    change: GroupChange::Created { subject, members },
                }
            }
            // A group that does not exist and one the sender is not in
            // get the same answer: a non-member cannot learn which ids
            // are taken.
            GroupAction::Send { body } => {
                let state = self.owned.get(&group).ok_or(ErrorKind::NotGroupMember)?;
                if !state.members.contains_key(&from) {
                    return Err(ErrorKind::NotGroupMember);
                }
                Post::Message {
                    from,
                    client_id,
                    sent_at_ms: at_ms,
                    body,
                }
            }
            GroupAction::Change(change) => {
                let state = self.owned.get(&group).ok_or(ErrorKind::NotGroupMember)?;
                state.check(from, &change, members_max)?;
                Post::Change {
                    by: from,
                    client_id,
                    at_ms,
                    change,
                }
            }
        };
        let state = self
            .owned
            .get_mut(&group)
            .expect("checked or created above");
        let gseq = state.next_gseq;
        state.next_gseq += 1;
        let recipients = state.apply(&post);
        self.dedup
            .insert(group, from, client_id, (gseq, post.sent_at_ms()), now_ms);
        Ok(Accepted {
            gseq,
            post,
            recipients,
        })
    }

    /// The groups this shard owns that `phone` is a member of, in no
    /// order. A pass over every group owned here: for a deletion, not for
    /// the message path.
    pub(super) fn groups_of(&self, phone: Phone) -> Vec<GroupId> {
        self.owned
            .iter()
            .filter(|(_, state)| state.members.contains_key(&phone))
            .map(|(&group, _)| group)
            .collect()
    }

    /// Takes `phone`, whose account was deleted, out of `group`: a `Left`
    /// change by it under [`SERVER_CLIENT_ID`], applied and numbered like
    /// a phone's but kept out of the resend table (a phone cannot resend
    /// what it never sent). `None` when it is not a member.
    pub(super) fn remove_member(
        &mut self,
        group: GroupId,
        phone: Phone,
        at_ms: u64,
    ) -> Option<Accepted> {
        let state = self.owned.get_mut(&group)?;
        if !state.members.contains_key(&phone) {
            return None;
        }
        let post = Post::Change {
            by: phone,
            client_id: SERVER_CLIENT_ID,
            at_ms,
            change: GroupChange::Left,
        };
        let gseq = state.next_gseq;
        state.next_gseq += 1;
        let recipients = state.apply(&post);
        Some(Accepted {
            gseq,
            post,
            recipients,
        })
    }

    /// Forgets what the read table holds for `member` (its account was
    /// deleted).
    pub(super) fn forget_member(&mut self, member: Phone) {
        self.reads.forget_recipient(member);
    }

    /// Checks a creation and makes the group, empty until the creation post
    /// is applied to it: its members, sorted, with `from` among them. Err
    /// when the id is taken, the subject too long or the members too many.
    fn create(
        &mut self,
        group: GroupId,
        from: Phone,
        subject: &str,
        mut members: Vec<Phone>,
        members_max: usize,
    ) -> Result<Vec<Phone>, ErrorKind> {
        if self.owned.contains_key(&group) {
            return Err(ErrorKind::GroupExists);
        }
        if subject.len() > GROUP_SUBJECT_BYTES_MAX {
            return Err(ErrorKind::BadRequest);
        }
        members.push(from);
        members.sort_unstable();
        members.dedup();
        if members.len() > members_max {
            return Err(ErrorKind::GroupFull);
        }
        self.owned.insert(group, Group::new());
        Ok(members)
    }

    /// Post `gseq` went out to `shards` shards, none of which has
    /// confirmed its copy yet.
    pub(super) fn fanned_out(&mut self, group: GroupId, gseq: u64, post: Post, shards: u16) {
        let state = self.owned.get_mut(&group).expect("the owner fans out");
        debug_assert!(state.unconfirmed.back().is_none_or(|u| u.gseq < gseq));
        state.unconfirmed.push_back(Unconfirmed {
            gseq,
            post,
            shards_left: shards,
        });
    }

    /// A shard confirmed that its copy of a post is durable.
    pub(super) fn confirmed(&mut self, group: GroupId, gseq: u64) {
        let Some(state) = self.owned.get_mut(&group) else {
            return;
        };
        let at = state.unconfirmed.partition_point(|u| u.gseq < gseq);
        if let Some(unconfirmed) = state.unconfirmed.get_mut(at).filter(|u| u.gseq == gseq) {
            unconfirmed.shards_left = unconfirmed.shards_left.saturating_sub(1);
        }
        while state
            .unconfirmed
            .front()
            .is_some_and(|u| u.shards_left == 0)
        {
            state.unconfirmed.pop_front();
        }
    }

    /// Group posts `from` made under `client_id` that this owner took, while
    /// its resend table remembers them.
    pub(super) fn trace(&mut self, from: Phone, client_id: u64) -> Vec<super::TraceHit> {
        self.dedup
            .iter()
            .filter(|listed| listed.from == from && listed.client_id == client_id)
            .map(|listed| {
                let id = listed.id & !storage::DEDUP_READ_BIT;
                super::TraceHit::stored(listed.to.to_string(), id, "posted")
            })
            .collect()
    }

    // ---- the members' half ---------------------------------------------------

    /// True when post `gseq` of `group` reached this shard before (a fan-out
    /// repeated after the owner restarted).
    pub(super) fn has_copy(&self, group: GroupId, gseq: u64) -> bool {
        self.marks.get(&group).is_some_and(|&mark| mark >= gseq)
    }

    /// Keeps a copy of a post that just arrived, with no entry referring to
    /// it yet. It goes in before the entries: appending one pumps, and the
    /// pump reads the copy.
    pub(super) fn store_copy(&mut self, group: GroupId, gseq: u64, post: Post) {
        debug_assert!(!self.has_copy(group, gseq));
        self.marks.insert(group, gseq);
        self.copies
            .insert((group, gseq), PostCopy { post, refs: 0 });
    }

    /// The post a member's mailbox entry refers to.
    pub(super) fn post(&self, group: GroupId, gseq: u64) -> Option<&Post> {
        self.copies.get(&(group, gseq)).map(|copy| &copy.post)
    }

    /// `refs` members' entries now refer to the copy that `store_copy`
    /// kept; with none, it goes.
    pub(super) fn referenced(&mut self, group: GroupId, gseq: u64, refs: u32) {
        if refs == 0 {
            self.copies.remove(&(group, gseq));
        } else if let Some(copy) = self.copies.get_mut(&(group, gseq)) {
            copy.refs += refs;
        }
    }

    /// `member` may send a read receipt for the message `client_id` of
    /// `author`, at `seq` of its mailbox, once it has been delivered.
    pub(super) fn readable(&mut self, member: Phone, author: Author, seq: u64, now_ms: u64) {
        let stamp = (seq, author.sent_at_ms);
        self.reads
            .insert(member, author.from, author.client_id, stamp, now_ms);
    }

    /// `by` read the post `client_id` of `from`: its `sent_at_ms` when it
    /// was delivered to `by` (up to `delivered_up_to`) and not read before.
    pub(super) fn mark_read(
        &mut self,
        by: Phone,
        from: Phone,
        client_id: u64,
        delivered_up_to: u64,
    ) -> Option<u64> {
        self.reads.mark_read(by, from, client_id, delivered_up_to)
    }

    /// Forgets read marks older than the dedup TTL.
    pub(super) fn expire_reads(&mut self, now_ms: u64) {
        self.reads.expire(now_ms);
    }

    /// A member's entry for post `gseq` left its mailbox (acknowledged, or
    /// `expired`): the copy loses a reference and goes with the last.
    /// `None` when there is no such copy.
    pub(super) fn released(
        &mut self,
        member: Phone,
        (group, gseq): (GroupId, u64),
        expired: bool,
    ) -> Option<Released> {
        let copy = self.copies.get_mut(&(group, gseq))?;
        copy.refs = copy.refs.saturating_sub(1);
        let released = Released {
            body_bytes: post_bytes(&copy.post),
            author: author_of(&copy.post),
        };
        if copy.refs == 0 {
            self.copies.remove(&(group, gseq));
        }
        if let (true, Some(author)) = (expired, released.author) {
            // Never delivered: never to be marked read.
            self.reads
                .forbid_read(member, author.from, author.client_id);
        }
        Some(released)
    }

    // ---- recovery and checkpoints ----------------------------------------------

    /// Applies a replayed group record.
    pub(super) fn restore(&mut self, record: Record, now_ms: u64) -> Result<(), RestoreError> {
        match record {
            Record::GroupPost { group, gseq, post } => {
                self.restore_post(group, gseq, post, now_ms)?
            }
            Record::GroupState {
                group,
                subject,
                members,
                next_gseq,
            } => {
                let mut state = Group::new();
                state.subject = subject;
                state.members = members.into_iter().collect();
                state.next_gseq = next_gseq;
                self.owned.insert(group, state);
            }
            Record::GroupDedup {
                group,
                from,
                client_id,
                gseq,
            } => self.dedup.replay(group, from, client_id, (gseq, 0), now_ms),
            Record::GroupDedupSent {
                group,
                from,
                client_id,
                gseq,
                sent_at_ms,
            } => {
                let stamp = (gseq, sent_at_ms);
                self.dedup.replay(group, from, client_id, stamp, now_ms);
            }
            Record::GroupCopy { group, gseq, post } => {
                // After a reshard every new shard gets the copies of all
                // old ones, so the same copy can come twice: keep the
                // references the first one has gathered.
                self.copies
                    .entry((group, gseq))
                    .or_insert(PostCopy { post, refs: 0 });
                self.mark(group, gseq);
            }
            Record::GroupMark { group, gseq } => self.mark(group, gseq),
            _ => unreachable!("the caller passes group records only"),
        }
        Ok(())
    }

    fn restore_post(
        &mut self,
        group: GroupId,
        gseq: u64,
        post: Post,
        now_ms: u64,
    ) -> Result<(), RestoreError> {
        let (from, client_id) = post.author();
        if client_id != SERVER_CLIENT_ID {
            let stamp = (gseq, post.sent_at_ms());
            self.dedup.replay(group, from, client_id, stamp, now_ms);
        }
        let creates = matches!(
            post,
            Post::Change {
                change: GroupChange::Created { .. },
                ..
            }
        );
        if creates && !self.owned.contains_key(&group) {
            self.owned.insert(group, Group::new());
        }
        let state = self
            .owned
            .get_mut(&group)
            .ok_or(RestoreError::UnknownGroup(group))?;
        let recipients = if gseq == state.next_gseq {
            state.next_gseq += 1;
            state.apply(&post)
        } else if gseq < state.next_gseq {
            // From a checkpoint: applied already, not confirmed.
            state.recipients_now(&post)
        } else {
            return Err(RestoreError::GroupSeqMismatch {
                group,
                recorded: gseq,
                expected: state.next_gseq,
            });
        };
        self.refan.push(Refan {
            group,
            gseq,
            post,
            recipients,
        });
        Ok(())
    }

    fn mark(&mut self, group: GroupId, gseq: u64) {
        let mark = self.marks.entry(group).or_insert(0);
        *mark = (*mark).max(gseq);
    }

    /// A replayed mailbox entry of `member` at `seq` refers to a copy,
    /// which must have come before: the bytes the entry stands for.
    pub(super) fn restore_entry(
        &mut self,
        member: Phone,
        (group, gseq): (GroupId, u64),
        seq: u64,
        now_ms: u64,
    ) -> Result<usize, RestoreError> {
        let copy = self
            .copies
            .get_mut(&(group, gseq))
            .ok_or(RestoreError::UnknownGroupPost { group, gseq })?;
        copy.refs += 1;
        let body_bytes = post_bytes(&copy.post);
        if let Some(author) = author_of(&copy.post) {
            self.readable(member, author, seq, now_ms);
        }
        Ok(body_bytes)
    }

    /// A replayed ack took `member`'s entry for a post away: the bytes it
    /// stood for. A copy that loses its last reference stays until
    /// `restored`: a later record may still refer to it (entries of one
    /// fan-out can reach the log at different times through the
    /// write-back cache).
    pub(super) fn restore_ack(
        &mut self,
        member: Phone,
        (group, gseq): (GroupId, u64),
    ) -> Option<usize> {
        let copy = self.copies.get_mut(&(group, gseq))?;
        copy.refs = copy.refs.saturating_sub(1);
        // The log does not say whether it was acknowledged or expired: no
        // `Read` of it is accepted after a restart.
        if let Some(author) = author_of(&copy.post) {
            self.reads
                .forbid_read(member, author.from, author.client_id);
        }
        Some(post_bytes(&copy.post))
    }

    /// The end of a restore: indexes the tables, drops copies nothing
    /// refers to, and returns the posts replayed on this owner, to be
    /// fanned out again (their shards recognise what they have).
    pub(super) fn restored(&mut self) -> Vec<Refan> {
        self.dedup.settle();
        self.reads.settle();
        self.copies.retain(|_, copy| copy.refs > 0);
        std::mem::take(&mut self.refan)
    }

    /// The group records of a checkpoint: copies first, since the mailbox
    /// entries after them refer to them.
    pub(super) fn checkpoint(&mut self, records: &mut Vec<Record>) {
        for (&(group, gseq), copy) in &self.copies {
            let post = copy.post.clone();
            records.push(Record::GroupCopy { group, gseq, post });
        }
        for (&group, &gseq) in &self.marks {
            records.push(Record::GroupMark { group, gseq });
        }
        for (&group, state) in &self.owned {
            records.push(Record::GroupState {
                group,
                subject: state.subject.clone(),
                members: state.members.iter().map(|(&p, &a)| (p, a)).collect(),
                next_gseq: state.next_gseq,
            });
            for unconfirmed in &state.unconfirmed {
                records.push(Record::GroupPost {
                    group,
                    gseq: unconfirmed.gseq,
                    post: unconfirmed.post.clone(),
                });
            }
        }
        for listed in self.dedup.iter() {
            records.push(Record::GroupDedupSent {
                group: listed.to,
                from: listed.from,
                client_id: listed.client_id,
                gseq: listed.id,
                sent_at_ms: listed.sent_at_ms,
            });
        }
    }
}

/// A message's author, client id and sent time; `None` for a change.
pub(super) fn author_of(post: &Post) -> Option<Author> {
    match *post {
        Post::Message {
            from,
            client_id,
            sent_at_ms,
            ..
        } => Some(Author {
            from,
            client_id,
            sent_at_ms,
        }),
        Post::Change { .. } => None,
    }
}

/// The bytes a member's entry for `post` stands for: a message's body, or
/// what a change carries (a creation's member list and subject).
pub(super) fn post_bytes(post: &Post) -> usize {
    const PHONE_BYTES: usize = 8;
    match post {
        Post::Message { body, .. } => body.len(),
        Post::Change { change, .. } => match change {
            GroupChange::Created { subject, members } => {
                subject.len() + members.len() * PHONE_BYTES
            }
            GroupChange::Added(members) => members.len() * PHONE_BYTES,
            GroupChange::Subject(subject) => subject.len(),
            _ => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u64) -> Phone {
        Phone::from_u64(15550000000 + n).unwrap()
    }

    fn create(groups: &mut Groups, members: Vec<Phone>) -> Result<Accepted, ErrorKind> {
        let group = GroupId::derive(phone(1), 1);
        let action = GroupAction::Create {
            subject: "s".into(),
            members,
        };
        groups.accept((group, phone(1), 1), (0, 0), action, 3)
    }

    #[test]
    fn an_owner_numbers_posts_and_refuses_what_does_not_apply() {
        let mut groups = Groups::new(60_000, 100);
        let group = GroupId::derive(phone(1), 1);
        assert_eq!(
            create(&mut groups, vec![phone(2), phone(3), phone(4)]).unwrap_err(),
            ErrorKind::GroupFull
        );
        assert_eq!(groups.owned(), 0, "a refused creation leaves nothing");
        let created = create(&mut groups, vec![phone(2)]).unwrap();
        assert_eq!((created.gseq, created.recipients.len()), (1, 2));
        assert_eq!(
            create(&mut groups, vec![]).unwrap_err(),
            ErrorKind::GroupExists
        );
        let send = || GroupAction::Send {
            body: vec![1].into(),
        };
        let outsider = groups.accept((group, phone(9), 2), (0, 0), send(), 3);
        assert_eq!(outsider.unwrap_err(), ErrorKind::NotGroupMember);
        let post = groups
            .accept((group, phone(2), 2), (0, 0), send(), 3)
            .unwrap();
        assert_eq!(post.gseq, 2);
        assert_eq!(post.recipients, vec![phone(1)], "all but the sender");
        assert_eq!(groups.resent(group, (phone(2), 2), 0), Some(2));
    }

    #[test]
    fn a_copy_lives_while_entries_refer_to_it_and_an_expired_one_is_never_read() {
        let mut groups = Groups::new(60_000, 100);
        let group = GroupId::derive(phone(1), 1);
        let post = Post::Message {
            from: phone(1),
            client_id: 7,
            sent_at_ms: 0,
            body: vec![0; 10].into(),
        };
        groups.store_copy(group, 1, post);
        assert!(groups.has_copy(group, 1));
        groups.referenced(group, 1, 2);
        let author = Author {
            from: phone(1),
            client_id: 7,
            sent_at_ms: 0,
        };
        groups.readable(phone(2), author, 1, 0);
        let released = groups.released(phone(3), (group, 1), false).unwrap();
        assert_eq!(released.body_bytes, 10);
        assert_eq!(released.author, Some(author));
        assert!(
            groups.post(group, 1).is_some(),
            "one entry still refers to it"
        );
        assert!(groups.released(phone(2), (group, 1), true).is_some());
        assert!(groups.post(group, 1).is_none());
        assert_eq!(
            groups.mark_read(phone(2), phone(1), 7, 1),
            None,
            "expired, so never read"
        );
        assert!(groups.has_copy(group, 1), "the mark outlives the copy");
    }
}
