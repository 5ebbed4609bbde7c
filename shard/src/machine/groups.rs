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

use storage::{EntryRecord, Post, Record};
use wire::{Chat, ErrorKind, GroupChange, GroupId, Phone, GROUP_SUBJECT_BYTES_MAX};

use super::{durability::Refusal, ConnId, PeerMessage, RestoreError, Shard};

/// A group on its owning shard.
#[derive(Debug)]
pub(super) struct Group {
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
pub(super) struct PostCopy {
    pub(super) post: Post,
    refs: u32,
}

/// What a phone asked of a group, on its way to the group's owner.
#[derive(Debug)]
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
    /// The members of a group this shard owns, but `phone`; `None` when
    /// there is no such group or `phone` is not a member.
    pub(super) fn group_members_except(&self, group: GroupId, phone: Phone) -> Option<Vec<Phone>> {
        let state = self.groups.get(&group)?;
        if !state.members.contains_key(&phone) {
            return None;
        }
        Some(
            state
                .members
                .keys()
                .copied()
                .filter(|&m| m != phone)
                .collect(),
        )
    }

    // ---- the owner's side ----------------------------------------------------

    /// A phone's request reached the group's owner. Returns what its `Sent`
    /// carries; the caller holds that answer for the next commit.
    pub(super) fn group_request(
        &mut self,
        group: GroupId,
        from: Phone,
        client_id: u64,
        at_ms: u64,
        action: GroupAction,
        session: ConnId,
    ) -> Result<u64, ErrorKind> {
        if self.durability.is_failed() {
            return Err(Refusal::Failed.kind());
        }
        let creates = matches!(action, GroupAction::Create { .. });
        if let Some(gseq) = self.group_dedup.get(group, from, client_id) {
            self.counters.messages_deduplicated += 1;
            return Ok(answer(group, creates, gseq));
        }
        if action.in_conversation()
            && self
                .order_in
                .admit(from, Chat::Group(group), client_id, session)
                .is_err()
        {
            self.counters.sends_out_of_order += 1;
            return Err(ErrorKind::OutOfOrder);
        }
        if let Err(refusal) = self.durability.admit() {
            self.counters.messages_refused_disk_full += 1;
            return Err(refusal.kind());
        }
        let members_max = self.config.group_members_max;
        let post = match action {
            GroupAction::Create { subject, members } => {
                if self.groups.contains_key(&group) {
                    return Err(ErrorKind::GroupExists);
                }
                if subject.len() > GROUP_SUBJECT_BYTES_MAX {
                    return Err(ErrorKind::BadRequest);
                }
                let mut members = members;
                members.push(from);
                members.sort_unstable();
                members.dedup();
                if members.len() > members_max {
                    return Err(ErrorKind::GroupFull);
                }
                self.groups.insert(group, Group::new());
                self.counters.groups += 1;
                let change = GroupChange::Created { subject, members };
                Post::Change {
                    by: from,
                    client_id,
                    at_ms,
                    change,
                }
            }
            // A group that does not exist and one the sender is not in
            // get the same answer: a non-member cannot learn which ids
            // are taken.
            GroupAction::Send { body } => {
                let state = self.groups.get(&group).ok_or(ErrorKind::NotGroupMember)?;
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
                let state = self.groups.get(&group).ok_or(ErrorKind::NotGroupMember)?;
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
            .groups
            .get_mut(&group)
            .expect("checked or created above");
        let gseq = state.next_gseq;
        state.next_gseq += 1;
        let recipients = state.apply(&post);
        self.counters.group_posts += 1;
        self.durability.record(Record::GroupPost {
            group,
            gseq,
            post: post.clone(),
        });
        self.group_dedup
            .insert(group, from, client_id, gseq, self.now_ms);
        self.fan_out(group, gseq, post, &recipients, true);
        Ok(answer(group, creates, gseq))
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
        let by_shard = self.config.map.split_by_shard(recipients.iter().copied());
        let mut shards_left = 0;
        for (shard, members) in by_shard.into_iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            shards_left += 1;
            let message = PeerMessage::GroupFanout {
                group,
                gseq,
                post: post.clone(),
                members,
            };
            if after_commit {
                self.durability.hold_peer(shard as u16, message);
            } else {
                self.route(shard as u16, message);
            }
        }
        if shards_left > 0 {
            let state = self.groups.get_mut(&group).expect("the owner fans out");
            state.unconfirmed.push_back(Unconfirmed {
                gseq,
                post,
                shards_left,
            });
        }
    }

    /// A shard confirmed that its copy of a post is durable.
    pub(super) fn group_stored(&mut self, group: GroupId, gseq: u64) {
        let Some(state) = self.groups.get_mut(&group) else {
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

    // ---- the members' side ---------------------------------------------------

    /// A post for `members`, who live on this shard.
    pub(super) fn group_fanout(
        &mut self,
        group: GroupId,
        gseq: u64,
        post: Post,
        members: Vec<Phone>,
    ) {
        let owner = self.config.map.shard_of_group(group);
        if self
            .group_marks
            .get(&group)
            .is_some_and(|&mark| mark >= gseq)
        {
            // Fanned out again after a restart: stored already.
            self.counters.group_copies_repeated += 1;
            self.route(owner, PeerMessage::GroupStored { group, gseq });
            return;
        }
        if self.durability.is_failed() {
            // Not confirmed: the owner fans it out again after a restart.
            return;
        }
        self.group_marks.insert(group, gseq);
        self.durability.record(Record::GroupCopy {
            group,
            gseq,
            post: post.clone(),
        });
        self.counters.group_copies_stored += 1;
        // The copy goes in first: appending pumps, and the pump reads it.
        self.group_copies
            .insert((group, gseq), PostCopy { post, refs: 0 });
        let (entries_max, bytes_max) = (self.config.group_entries_max, self.config.group_bytes_max);
        // What every member's entry needs of the post, looked up once.
        let (body_bytes, reader_key) = {
            let post = &self.group_copies[&(group, gseq)].post;
            let key = match post {
                Post::Message {
                    from, client_id, ..
                } => Some((*from, *client_id)),
                Post::Change { .. } => None,
            };
            (post_bytes(post), key)
        };
        let mut refs = 0;
        for member in members {
            // Group posts have bounds of their own in each member's
            // mailbox: a group one was added to cannot make it refuse 1:1
            // messages, nor hold more than `group_bytes_max` for it.
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
                    refs += 1;
                    let seq = self.append(member, EntryRecord::Group { group, gseq });
                    if let (Some(seq), Some((from, client_id))) = (seq, reader_key) {
                        self.group_reads
                            .insert(member, from, client_id, seq, self.now_ms);
                    }
                }
                Some(false) => {
                    self.counters.group_entries_dropped_mailbox_full += 1;
                    // Its author was answered `Sent`: it is told, never
                    // left to believe the post arrived.
                    self.tell_undeliverable(member, group, gseq);
                }
                // Added while not (or no longer) registered here.
                None => self.counters.group_entries_no_account += 1,
            }
        }
        // Counted once after the loop: nothing in it releases an entry.
        if let Some(copy) = self.group_copies.get_mut(&(group, gseq)) {
            copy.refs += refs;
        }
        self.counters.group_entries_stored += u64::from(refs);
        if refs == 0 {
            self.group_copies.remove(&(group, gseq));
        }
        self.durability
            .hold_peer(owner, PeerMessage::GroupStored { group, gseq });
    }

    /// A member acknowledged `group`'s post `gseq`: the copy loses a
    /// reference (and goes with the last), and a message's sender is told.
    /// A member's entry for a post left its mailbox: acknowledged (the
    /// author hears `Delivered`) or expired (`Expired`).
    /// `member` will never get post `gseq` of `group`: its author gets an
    /// `Undeliverable` receipt (notices have no author waiting on them).
    fn tell_undeliverable(&mut self, member: Phone, group: GroupId, gseq: u64) {
        let Some(Post::Message {
            from, client_id, ..
        }) = self.group_copies.get(&(group, gseq)).map(|c| &c.post)
        else {
            return;
        };
        let (to, client_id) = (*from, *client_id);
        let receipt = PeerMessage::Receipt {
            to,
            by: member,
            client_id,
            kind: wire::ReceiptKind::Undeliverable,
        };
        self.route(self.config.map.shard_of(to), receipt);
    }

    pub(super) fn group_entry_released(
        &mut self,
        by: Phone,
        group: GroupId,
        gseq: u64,
        kind: wire::ReceiptKind,
    ) {
        let Some(copy) = self.group_copies.get_mut(&(group, gseq)) else {
            return;
        };
        copy.refs = copy.refs.saturating_sub(1);
        let body_bytes = post_bytes(&copy.post);
        if let Some(account) = self.accounts.get_mut(&by) {
            account.mailbox.group_entry_gone(body_bytes);
        }
        let Some(copy) = self.group_copies.get(&(group, gseq)) else {
            return;
        };
        let receipt = match &copy.post {
            Post::Message {
                from, client_id, ..
            } => Some((*from, *client_id)),
            Post::Change { .. } => None,
        };
        if copy.refs == 0 {
            self.group_copies.remove(&(group, gseq));
        }
        if let Some((from, client_id)) = receipt {
            match kind {
                wire::ReceiptKind::Expired => {
                    self.counters.messages_expired += 1;
                    // Never delivered: never to be marked read.
                    self.group_reads.forbid_read(by, from, client_id);
                }
                _ => self.counters.messages_acked += 1,
            }
            let shard = self.config.map.shard_of(from);
            let receipt = PeerMessage::Receipt {
                to: from,
                by,
                client_id,
                kind,
            };
            self.route(shard, receipt);
        }
    }

    // ---- recovery and checkpoints ----------------------------------------------

    pub(super) fn restore_group_record(&mut self, record: Record) -> Result<(), RestoreError> {
        match record {
            Record::GroupPost { group, gseq, post } => {
                let (from, client_id) = post.author();
                self.group_dedup
                    .replay(group, from, client_id, gseq, self.now_ms);
                if matches!(
                    post,
                    Post::Change {
                        change: GroupChange::Created { .. },
                        ..
                    }
                ) && !self.groups.contains_key(&group)
                {
                    self.groups.insert(group, Group::new());
                    self.counters.groups += 1;
                }
                let state = self
                    .groups
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
                self.group_refan.push((group, gseq, post, recipients));
            }
            Record::GroupState {
                group,
                subject,
                members,
                next_gseq,
            } => {
                if !self.groups.contains_key(&group) {
                    self.counters.groups += 1;
                }
                let mut state = Group::new();
                state.subject = subject;
                state.members = members.into_iter().collect();
                state.next_gseq = next_gseq;
                self.groups.insert(group, state);
            }
            Record::GroupDedup {
                group,
                from,
                client_id,
                gseq,
            } => self
                .group_dedup
                .replay(group, from, client_id, gseq, self.now_ms),
            Record::GroupCopy { group, gseq, post } => {
                // After a reshard every new shard gets the copies of all
                // old ones, so the same copy can come twice: keep the
                // references the first one has gathered.
                self.group_copies
                    .entry((group, gseq))
                    .or_insert(PostCopy { post, refs: 0 });
                self.mark_group(group, gseq);
            }
            Record::GroupMark { group, gseq } => self.mark_group(group, gseq),
            _ => unreachable!("the caller passes group records only"),
        }
        Ok(())
    }

    fn mark_group(&mut self, group: GroupId, gseq: u64) {
        let mark = self.group_marks.entry(group).or_insert(0);
        *mark = (*mark).max(gseq);
    }

    /// A replayed mailbox entry refers to a copy: it must have come before.
    pub(super) fn restore_group_entry(
        &mut self,
        member: Phone,
        group: GroupId,
        gseq: u64,
        seq: u64,
    ) -> Result<(), RestoreError> {
        let copy = self
            .group_copies
            .get_mut(&(group, gseq))
            .ok_or(RestoreError::UnknownGroupPost { group, gseq })?;
        copy.refs += 1;
        let body_bytes = post_bytes(&copy.post);
        if let Some(account) = self.accounts.get_mut(&member) {
            account.mailbox.group_entry_bytes(body_bytes);
        }
        self.readable_group_entry(member, group, gseq, seq);
        Ok(())
    }

    /// `member` may send a read receipt for the post at `seq` of its
    /// mailbox once it has been delivered: notes who wrote it under which
    /// client id, which is all a `Read` names.
    fn readable_group_entry(&mut self, member: Phone, group: GroupId, gseq: u64, seq: u64) {
        let Some(copy) = self.group_copies.get(&(group, gseq)) else {
            return;
        };
        if let Post::Message {
            from, client_id, ..
        } = copy.post
        {
            self.group_reads
                .insert(member, from, client_id, seq, self.now_ms);
        }
    }

    /// A replayed ack took an entry away. A copy that loses its last
    /// reference stays until `restored`: a later record may still refer
    /// to it (entries of one fan-out can reach the log at different times
    /// through the write-back cache).
    pub(super) fn restore_group_ack(&mut self, member: Phone, group: GroupId, gseq: u64) {
        if let Some(copy) = self.group_copies.get_mut(&(group, gseq)) {
            copy.refs = copy.refs.saturating_sub(1);
            let body_bytes = post_bytes(&copy.post);
            if let Some(account) = self.accounts.get_mut(&member) {
                account.mailbox.group_entry_gone(body_bytes);
            }
            // The log does not say whether it was acknowledged or expired:
            // no `Read` of it is accepted after a restart.
            if let Post::Message {
                from, client_id, ..
            } = copy.post
            {
                self.group_reads.forbid_read(member, from, client_id);
            }
        }
    }

    /// The end of a restore: drops copies nothing refers to, and fans out
    /// again every post replayed on this owner (its shards recognise what
    /// they have).
    pub(super) fn groups_restored(&mut self) {
        self.group_copies.retain(|_, copy| copy.refs > 0);
        for (group, gseq, post, recipients) in std::mem::take(&mut self.group_refan) {
            self.fan_out(group, gseq, post, &recipients, false);
        }
    }

    /// The group records of a checkpoint: copies first, since the
    /// mailbox entries after them refer to them.
    pub(super) fn checkpoint_groups(&mut self, records: &mut Vec<Record>) {
        for (&(group, gseq), copy) in &self.group_copies {
            records.push(Record::GroupCopy {
                group,
                gseq,
                post: copy.post.clone(),
            });
        }
        for (&group, &gseq) in &self.group_marks {
            records.push(Record::GroupMark { group, gseq });
        }
        for (&group, state) in &self.groups {
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
        for (group, from, client_id, gseq) in self.group_dedup.iter() {
            records.push(Record::GroupDedup {
                group,
                from,
                client_id,
                gseq,
            });
        }
    }
}

/// The bytes a member's entry for `post` stands for: a message's body, or
/// what a change carries (a creation's member list and subject).
fn post_bytes(post: &Post) -> usize {
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
