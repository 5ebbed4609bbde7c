//! The 1:1 message path and what every send shares: the sender's checks
//! (size, order across refusals, send allowance, lookups), storing in the
//! recipient's mailbox with resend detection, feeding the recipient's
//! connection within its window, acknowledgements and receipts.

use std::{collections::BTreeMap, sync::Arc};

use storage::{EntryRecord, Record};
use wire::{Chat, ErrorKind, GroupId, Phone, ReceiptKind, ServerFrame, BODY_BYTES_MAX};

use super::{
    connections::Session,
    durability::{Refusal, DISK_FULL, STORAGE_FAILED, STORAGE_UNAVAILABLE},
    group_frame,
    groups::Author,
    in_flight,
    owed::{OwedKey, OwedReceipt, RECEIPTS_PER_MESSAGE_MAX},
    social::{self, StrangersRefused},
    ConnId, Dest, GroupAction, PeerMessage, Shard,
};
use crate::{order::Blocked, Home};

impl Shard {
    // ---- messages ----------------------------------------------------------

    pub(super) fn send(&mut self, session: Session, client_id: u64, to: Phone, body: &[u8]) {
        let (Session { id, phone: from }, now_ms) = (session, self.now_ms);
        if body.len() > BODY_BYTES_MAX {
            let detail = format!("body of {} bytes exceeds {BODY_BYTES_MAX}", body.len());
            self.reply_error(id, ErrorKind::BodyTooLarge, Some(client_id), &detail);
            return;
        }
        let chat = Chat::Direct(to);
        if !self.admit_in_order(id, from, chat, client_id) {
            return;
        }
        if !self.take_send_token(id, client_id) {
            self.order_out.refused(from, chat, client_id, id, now_ms);
            return;
        }
        if let Err(refused) = self.charge_stranger(from, to) {
            self.refuse_strangers(session, (Some(chat), client_id), refused);
            return;
        }
        let message = PeerMessage::Deliver {
            from,
            to,
            client_id,
            sent_at_ms: self.clock.wall_ms(now_ms),
            sender_since_ms: self.accounts[&from].since_ms,
            body: body.into(),
            reply: id,
        };
        if self.ask(self.home_of(to), message).is_err() {
            self.refuse_unavailable(session, Some(chat), client_id);
        }
    }

    /// A request whose home's node is not live: nothing was stored, the
    /// phone sends it again later (a retryable refusal, so its
    /// conversation waits for it: see `order`).
    pub(super) fn refuse_unavailable(
        &mut self,
        session: Session,
        chat: Option<Chat>,
        client_id: u64,
    ) {
        let Session { id, phone: from } = session;
        self.counters.refused_unavailable += 1;
        let detail =
            "the server keeping the recipient's data is not reachable now; send again later";
        self.reply_error(id, ErrorKind::Unavailable, Some(client_id), detail);
        if let Some(chat) = chat {
            self.order_out
                .refused(from, chat, client_id, id, self.now_ms);
        }
    }

    /// `by` read the message `client_id` of `from`. A receipt lands in
    /// another account's mailbox, so it must refer to something the server
    /// gave this reader: a 1:1 message or group post from `from` with that
    /// client id, stored for `by` and already written to this connection,
    /// whose read receipt was not passed on before. Anything else is
    /// answered `BadRequest` and never reaches `from`. It also spends a
    /// send token, like a message.
    pub(super) fn read(&mut self, session: Session, from: Phone, client_id: u64) {
        let Session { id, phone: by } = session;
        if !self.take_send_token(id, client_id) {
            return;
        }
        let delivered = self.conns.get(id).map_or(0, |c| c.delivered_up_to());
        let readable = self
            .dedup
            .mark_read(by, from, client_id, delivered)
            .or_else(|| self.groups.mark_read(by, from, client_id, delivered));
        let Some(sent_at_ms) = readable else {
            self.counters.reads_refused += 1;
            let detail = "no message with that sender and client_id was delivered here, \
                          or its read receipt was sent already";
            self.reply_error(id, ErrorKind::BadRequest, Some(client_id), detail);
            return;
        };
        let author = Author {
            from,
            client_id,
            sent_at_ms,
        };
        self.owe_receipt(author, by, ReceiptKind::Read);
    }

    /// A receipt of `kind` from `by` for `author`'s message, to the
    /// author's home. To a node that is not live it is kept on disk until
    /// that node has it (see `owed`); if the table is full (or the
    /// journal failed) it waits on the link in memory.
    pub(super) fn owe_receipt(&mut self, author: Author, by: Phone, kind: ReceiptKind) {
        let home = self.home_of(author.from);
        if matches!(home, Home::Away { live: false, .. }) {
            if self.owed.has_room(1) && !self.durability.is_failed() {
                self.keep_receipts(vec![OwedReceipt {
                    to: author.from,
                    by,
                    client_id: author.client_id,
                    kind,
                    sent_at_ms: author.sent_at_ms,
                }]);
                return;
            }
            self.counters.receipts_owed_full += 1;
        }
        let receipt = PeerMessage::Receipt {
            to: author.from,
            by,
            client_id: author.client_id,
            kind,
            sent_at_ms: author.sent_at_ms,
        };
        self.owe(home, receipt);
    }

    // ---- receipts kept until stored (see `owed`) ---------------------------

    /// Keeps `receipts` until their recipients' shards have them on disk:
    /// recorded in this batch, and told once it is durable to the live
    /// ones (the others at a tick once they are live).
    pub(super) fn keep_receipts(&mut self, receipts: Vec<OwedReceipt>) {
        let mut tell = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            self.durability.record(receipt.record());
            let live = self.may_tell(&receipt);
            self.owed.owe(receipt, live.then_some(self.now_ms));
            if live {
                tell.push(receipt);
            }
        }
        self.counters.receipts_owed = self.owed.len() as u64;
        for (dest, message) in self.owed_messages(tell) {
            self.durability.hold_peer(dest, message);
        }
    }

    /// Whether `receipt` may be told now: its recipient's home is known
    /// and live.
    fn may_tell(&self, receipt: &OwedReceipt) -> bool {
        self.dest(self.home_of(receipt.to))
            .is_some_and(|dest| self.is_live(dest))
    }

    /// `receipts` as `ReceiptsOwed` messages of at most
    /// `RECEIPTS_PER_MESSAGE_MAX`, one or more per recipient shard.
    fn owed_messages(&self, receipts: Vec<OwedReceipt>) -> Vec<(Dest, PeerMessage)> {
        let mut by_dest: BTreeMap<Dest, Vec<OwedReceipt>> = BTreeMap::new();
        for receipt in receipts {
            if let Some(dest) = self.dest(self.home_of(receipt.to)) {
                by_dest.entry(dest).or_default().push(receipt);
            }
        }
        let mut messages = Vec::new();
        for (dest, receipts) in by_dest {
            for chunk in receipts.chunks(RECEIPTS_PER_MESSAGE_MAX) {
                let receipts = chunk.to_vec();
                messages.push((dest, PeerMessage::ReceiptsOwed { receipts }));
            }
        }
        messages
    }

    /// Tells again the kept receipts that are due and may be told.
    pub(super) fn owed_tick(&mut self) {
        if self.owed.len() == 0 || self.durability.is_failed() {
            return;
        }
        let (placement, map) = (self.placement.clone(), self.config.map);
        let due = self.owed.due(self.now_ms, |receipt| {
            let Some(placement) = &placement else {
                return true;
            };
            match placement.home(map.partition_of(receipt.to), map.shards()) {
                Home::Here { .. } | Home::Away { live: true, .. } => true,
                Home::Away { live: false, .. } | Home::Unknown => false,
            }
        });
        for (dest, message) in self.owed_messages(due) {
            self.route(dest, message);
        }
        self.run_local();
    }

    /// Receipts owed to accounts of this shard: each is stored through
    /// any write-back cache, and those that need no telling again are
    /// answered `OwedStored` once durable, to each owing shard. A shard
    /// whose journal failed stores nothing and does not answer: they are
    /// told again (after its restart).
    pub(super) fn receipts_owed(&mut self, receipts: Vec<OwedReceipt>) {
        if self.durability.is_failed() {
            return;
        }
        let here = Home::Here {
            island: self.config.island,
            shard: self.config.shard_id,
        };
        let mut answers: BTreeMap<Dest, Vec<OwedKey>> = BTreeMap::new();
        for receipt in receipts {
            if self.home_of(receipt.to) != here {
                // Its account lives elsewhere now: told there next time.
                continue;
            }
            let about = (receipt.by, receipt.client_id, receipt.sent_at_ms);
            self.receipt_arrived_through(receipt.to, about, receipt.kind);
            if let Some(owing) = self.dest(self.home_of(receipt.by)) {
                answers.entry(owing).or_default().push(receipt.key());
            }
        }
        for (owing, stored) in answers {
            self.durability
                .hold_peer(owing, PeerMessage::OwedStored { stored });
        }
    }

    /// The receipts `stored` are durable on their recipients' shards.
    pub(super) fn owed_stored(&mut self, stored: &[OwedKey]) {
        self.owed.stored(stored);
        self.counters.receipts_owed = self.owed.len() as u64;
    }

    /// Passes a request to the group's owner, spending a send token: a
    /// group post lands in every member's mailbox, so it costs at least
    /// what a message does. A creation or an addition names numbers that
    /// become members: those outside `from`'s contacts cost lookups (the
    /// answer says whether they are registered), and every one of them
    /// must have an account, which a lookup across shards checks before
    /// the request goes on (see `social::LookupFor::Group`).
    pub(super) fn ask_group(
        &mut self,
        session: Session,
        client_id: u64,
        group: GroupId,
        action: GroupAction,
    ) {
        let (Session { id, phone: from }, now_ms) = (session, self.now_ms);
        let chat = action.in_conversation().then_some(Chat::Group(group));
        if let Some(chat) = chat {
            if !self.admit_in_order(id, from, chat, client_id) {
                return;
            }
        }
        if !self.take_send_token(id, client_id) {
            if let Some(chat) = chat {
                self.order_out.refused(from, chat, client_id, id, now_ms);
            }
            return;
        }
        if matches!(action, GroupAction::Create { .. }) {
            let (rate, now) = (self.config.group_create_rate(), self.now_ms);
            let account = self.account_mut(from);
            if account.groups_created.take(1, rate, now).is_err() {
                self.counters.rate_limited += 1;
                let detail = format!("at most {} new groups a day", rate.tokens);
                self.reply_error(id, ErrorKind::RateLimited, Some(client_id), &detail);
                return;
            }
        }
        let joining = action.joining(from);
        let owner = self.home_of_group(group);
        let request = PeerMessage::GroupRequest {
            group,
            from,
            client_id,
            at_ms: self.clock.wall_ms(now_ms),
            sender_since_ms: self.accounts[&from].since_ms,
            reply: id,
            action,
        };
        if joining.is_empty() {
            if self.ask(owner, request).is_err() {
                self.refuse_unavailable(session, chat, client_id);
            }
            return;
        }
        if let Err(refused) = self.charge_strangers(from, &joining) {
            self.refuse_strangers(session, (chat, client_id), refused);
            return;
        }
        let purpose = social::LookupFor::Group {
            owner,
            request: Box::new(request),
        };
        self.start_lookup(id, from, client_id, joining, purpose);
    }

    /// Whether the send `client_id` may go on in its conversation (see
    /// `order`); if not, answers it `OutOfOrder` and returns false.
    fn admit_in_order(&mut self, id: ConnId, from: Phone, chat: Chat, client_id: u64) -> bool {
        let Err(blocked) = self.order_out.admit(from, chat, client_id, id) else {
            return true;
        };
        self.counters.sends_out_of_order += 1;
        let detail = match blocked {
            Blocked::By(waits_for) => format!(
                "client_id {waits_for} of this conversation was refused: \
                 send again from it on, in order"
            ),
            Blocked::Saturated => "more conversations wait for refused sends than are \
                                   remembered: send the refused ones again first, in order"
                .to_owned(),
        };
        self.reply_error(id, ErrorKind::OutOfOrder, Some(client_id), &detail);
        false
    }

    /// What every send meets on the shard that stores it or owns its
    /// group, after resend detection: its conversation's order (`chat`,
    /// when it belongs to one; see `order`) and room for new durable work.
    pub(super) fn admit_incoming(
        &mut self,
        from: Phone,
        chat: Option<Chat>,
        client_id: u64,
        session: ConnId,
    ) -> Result<(), ErrorKind> {
        if let Some(chat) = chat {
            if self.order_in.admit(from, chat, client_id, session).is_err() {
                self.counters.sends_out_of_order += 1;
                return Err(ErrorKind::OutOfOrder);
            }
        }
        if let Err(refusal) = self.durability.admit() {
            self.counters.messages_refused_disk_full += 1;
            return Err(refusal.kind());
        }
        Ok(())
    }

    /// Answers a send over its sender's lookup allowance `RateLimited`; its
    /// conversation (if it belongs to one) waits for it to come again.
    fn refuse_strangers(
        &mut self,
        session: Session,
        (chat, client_id): (Option<Chat>, u64),
        refused: StrangersRefused,
    ) {
        self.counters.rate_limited += 1;
        if let Some(chat) = chat {
            let now_ms = self.now_ms;
            self.order_out
                .refused(session.phone, chat, client_id, session.id, now_ms);
        }
        let detail = refused.to_string();
        let kind = ErrorKind::RateLimited;
        self.reply_error(session.id, kind, Some(client_id), &detail);
    }

    /// A send the shard routed was refused with `result` by the shard that
    /// stores it or owns its group: a retryable refusal opens a gap in its
    /// conversation (see `order`).
    pub(super) fn note_refusal(
        &mut self,
        from: Phone,
        chat: Chat,
        client_id: u64,
        reply: ConnId,
        result: &Result<u64, ErrorKind>,
    ) {
        if let Err(kind) = result {
            if kind.is_retryable() && *kind != ErrorKind::OutOfOrder {
                self.order_in
                    .refused(from, chat, client_id, reply, self.now_ms);
            }
        }
    }

    /// Spends one of the account's send tokens; without one, answers the
    /// frame `client_id` with `RateLimited` and returns false.
    pub(super) fn take_send_token(&mut self, id: ConnId, client_id: u64) -> bool {
        if !self.take_quiet_token(id) {
            self.counters.rate_limited += 1;
            let kind = ErrorKind::RateLimited;
            self.reply_error(id, kind, Some(client_id), "sending too fast");
            return false;
        }
        true
    }

    /// Spends one of the send tokens of the connection's account, if it
    /// has one.
    pub(super) fn take_quiet_token(&mut self, id: ConnId) -> bool {
        let (rate, now_ms) = (self.config.send_rate(), self.now_ms);
        let Some(phone) = self.conns.account(id) else {
            return false;
        };
        self.accounts
            .get_mut(&phone)
            .is_some_and(|a| a.send.take(1, rate, now_ms).is_ok())
    }

    pub(super) fn ack(&mut self, session: Session, up_to: u64) {
        let Session { id, phone: owner } = session;
        let delivered = self.conns.get(id).expect("a session").delivered_up_to();
        if up_to > delivered {
            let detail = format!("ack up to {up_to}, but only {delivered} was delivered");
            self.reply_error(id, ErrorKind::BadAck, None, &detail);
            return;
        }
        let account = self.account_mut(owner);
        if up_to <= account.mailbox.acked_up_to() {
            // A repeated ack changes nothing, so it writes no record.
            return;
        }
        self.release_entries(owner, up_to, ReceiptKind::Delivered);
        self.pump(id);
    }

    /// Deletes `owner`'s entries up to `up_to`, telling each message's
    /// sender why: `Delivered` (acknowledged), `Expired`, or
    /// `Undeliverable` (the account is being deleted).
    pub(super) fn release_entries(&mut self, owner: Phone, up_to: u64, kind: ReceiptKind) {
        for author in self.take_entries(owner, up_to, kind) {
            self.owe_receipt(author, owner, kind);
        }
    }

    /// `release_entries` but for the receipts: those of the messages
    /// taken out are returned, for the caller to deliver.
    pub(super) fn take_entries(
        &mut self,
        owner: Phone,
        up_to: u64,
        kind: ReceiptKind,
    ) -> Vec<Author> {
        let account = self.account_mut(owner);
        let mut receipts = Vec::new();
        let mut groups_released = Vec::new();
        let mut receipts_released = 0;
        let before = account.mailbox.size();
        account.mailbox.ack(up_to, |entry| match entry.record {
            EntryRecord::Message {
                from,
                client_id,
                sent_at_ms,
                ..
            } => receipts.push((
                Author {
                    from,
                    client_id,
                    sent_at_ms,
                },
                entry.seq,
            )),
            EntryRecord::Group { group, gseq } => groups_released.push((group, gseq)),
            EntryRecord::Receipt { .. } => receipts_released += 1,
        });
        let after = account.mailbox.size();
        self.mailbox_totals.moved(before, after);
        match kind {
            ReceiptKind::Expired => {
                self.counters.messages_expired += receipts.len() as u64;
                // Deleted undelivered: a `Read` for them would be a lie
                // (and would tell the reader what it never received). The
                // mark is recorded, so a restart keeps it.
                for &(author, seq) in &receipts {
                    self.dedup.forbid_read(owner, author.from, author.client_id);
                    self.durability.record(Record::DedupSent {
                        owner,
                        from: author.from,
                        client_id: author.client_id,
                        seq: seq | storage::DEDUP_READ_BIT,
                        sent_at_ms: author.sent_at_ms,
                    });
                }
            }
            // The account goes, and its resend table entries with it.
            ReceiptKind::Undeliverable => {
                self.counters.messages_undeliverable += receipts.len() as u64;
            }
            _ => {
                self.counters.messages_acked += receipts.len() as u64;
                self.counters.receipts_acked += receipts_released;
            }
        }
        self.record_mailbox(Record::MailboxAck { owner, up_to });
        let mut authors: Vec<Author> = groups_released
            .into_iter()
            .filter_map(|(group, gseq)| self.group_entry_released(owner, group, gseq, kind))
            .collect();
        authors.extend(receipts.into_iter().map(|(author, _)| author));
        authors
    }

    /// Answers a `Deliver` or a `GroupRequest` on the sender's shard: a
    /// refusal at once (nothing was stored, so there is nothing to wait
    /// for), a success once the batch holding it is durable. A resend is
    /// held too: its first copy may not be durable yet.
    pub(super) fn answer_stored(
        &mut self,
        reply: ConnId,
        sender: Phone,
        client_id: u64,
        result: Result<u64, ErrorKind>,
    ) {
        let home = self.home_of(sender);
        let failed = result.is_err();
        let answer = PeerMessage::Stored {
            reply,
            sender,
            client_id,
            result,
        };
        if failed {
            self.owe(home, answer);
        } else {
            self.owe_after_commit(home, answer);
        }
    }

    /// The answer to a send, for the sender's connection if it is still the
    /// session that sent it.
    pub(super) fn stored(
        &mut self,
        reply: ConnId,
        sender: Phone,
        client_id: u64,
        result: Result<u64, ErrorKind>,
    ) {
        if self.in_flight.answered((sender, client_id)) == in_flight::Answer::Drop {
            // Refused when its island moved; the phone was told.
            return;
        }
        if !self.conns.is_session_of(reply, sender) {
            // Nobody to tell; an operator's trace still learns of it.
            if let Err(kind) = result {
                let refused = (sender, client_id);
                let detail = refusal_detail(kind);
                self.refusals.note(refused, kind, detail, self.now_ms);
            }
            return;
        }
        match result {
            Ok(id) => self.reply(reply, &ServerFrame::Sent { client_id, id }),
            Err(kind) => self.reply_error(reply, kind, Some(client_id), refusal_detail(kind)),
        }
    }

    /// A receipt for `to`'s mailbox, unless it holds `receipts_max` already.
    pub(super) fn receipt_arrived(
        &mut self,
        to: Phone,
        about: (Phone, u64, u64),
        kind: ReceiptKind,
    ) {
        self.store_receipt(to, about, kind, false);
    }

    /// `receipt_arrived`, but the entry is written through any write-back
    /// cache: for receipts nothing could produce again after a crash (a
    /// deleted account's).
    pub(super) fn receipt_arrived_through(
        &mut self,
        to: Phone,
        about: (Phone, u64, u64),
        kind: ReceiptKind,
    ) {
        self.store_receipt(to, about, kind, true);
    }

    fn store_receipt(
        &mut self,
        to: Phone,
        (by, client_id, sent_at_ms): (Phone, u64, u64),
        kind: ReceiptKind,
        through: bool,
    ) {
        let receipt = EntryRecord::Receipt {
            kind,
            by,
            client_id,
        };
        let Some(account) = self.accounts.get(&to) else {
            return;
        };
        if sent_at_ms < account.since_ms {
            // About a message of the number's deleted previous account.
            self.counters.receipts_dropped_predecessor += 1;
            return;
        }
        if account.mailbox.receipts() >= self.config.receipts_max {
            self.counters.receipts_dropped_mailbox_full += 1;
            return;
        }
        let appended = match through {
            false => self.append(to, receipt),
            true => self.append_through(to, receipt),
        };
        if appended.is_some() {
            self.counters.receipts_stored += 1;
        }
    }

    pub(super) fn store_message(
        &mut self,
        from: Phone,
        to: Phone,
        client_id: u64,
        (sent_at_ms, sender_since_ms): (u64, u64),
        body: Arc<[u8]>,
        session: ConnId,
    ) -> Result<u64, ErrorKind> {
        if !self.accounts.contains_key(&to) {
            return Err(ErrorKind::UnknownRecipient);
        }
        if self.durability.is_failed() {
            return Err(Refusal::Failed.kind());
        }
        if let Some(seq) = self.dedup.get_since(to, from, client_id, sender_since_ms) {
            self.counters.messages_deduplicated += 1;
            return Ok(seq);
        }
        self.admit_incoming(from, Some(Chat::Direct(to)), client_id, session)?;
        let mailbox = &self.accounts[&to].mailbox;
        if mailbox.messages() >= self.config.mailbox_entries_max
            || mailbox.bytes() + body.len() > self.config.mailbox_bytes_max
        {
            self.counters.messages_refused_mailbox_full += 1;
            return Err(ErrorKind::MailboxFull);
        }
        let message = EntryRecord::Message {
            from,
            client_id,
            sent_at_ms,
            body,
        };
        let seq = self.append(to, message).expect("account checked above");
        self.dedup
            .insert(to, from, client_id, (seq, sent_at_ms), self.now_ms);
        self.counters.messages_stored += 1;
        Ok(seq)
    }

    /// Appends an entry to `owner`'s mailbox, records it, and feeds the
    /// owner's connection. `None` when `owner` has no account.
    pub(super) fn append(&mut self, owner: Phone, entry: EntryRecord) -> Option<u64> {
        self.append_with(owner, entry, false)
    }

    /// `append`, but the entry is written at the next commit whatever
    /// `sync_delay_ms` says: for entries that nothing could produce again
    /// if a crash lost them (a group's changes, a deleted account's
    /// receipts). The account's cached records go first, as records stay
    /// in order.
    pub(super) fn append_through(&mut self, owner: Phone, entry: EntryRecord) -> Option<u64> {
        self.write_cached_of(owner);
        self.append_with(owner, entry, true)
    }

    fn append_with(&mut self, owner: Phone, entry: EntryRecord, through: bool) -> Option<u64> {
        let account = self.accounts.get_mut(&owner)?;
        let wakes = !matches!(entry, EntryRecord::Receipt { .. });
        let before = account.mailbox.size();
        let seq = account.mailbox.push(entry.clone());
        let after = account.mailbox.size();
        debug_assert!(
            seq > account.write_back.written_put(),
            "seq {seq} of {owner} is at or below what the journal holds"
        );
        let session = account.session;
        self.mailbox_totals.moved(before, after);
        let record = Record::MailboxPut { owner, seq, entry };
        match through {
            false => self.record_mailbox(record),
            true => self.write_mailbox_record(record, false),
        }
        match session {
            Some(session) => self.pump(session),
            None if wakes => self.something_waits(owner),
            None => {}
        }
        Some(seq)
    }

    /// Moves mailbox entries into a connection's outbox while its window of
    /// unacknowledged messages and its outbox have room. A slow phone is fed
    /// from its mailbox this way, never from an unbounded queue.
    pub(super) fn pump(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        let Some(phone) = conn.account() else {
            return;
        };
        let Some(account) = self.accounts.get(&phone) else {
            return;
        };
        let acked_up_to = account.mailbox.acked_up_to();
        let (mut written, mut receipts_written) = (0, 0);
        for entry in account.mailbox.after(conn.delivered_up_to()) {
            let unacked = conn.delivered_up_to().saturating_sub(acked_up_to);
            if unacked >= self.config.unacked_messages_max
                || conn.outbox_len() >= self.config.outbox_feed_bytes_max
            {
                break;
            }
            let frame = match &entry.record {
                EntryRecord::Message {
                    from,
                    client_id,
                    sent_at_ms,
                    body,
                } => ServerFrame::Message {
                    seq: entry.seq,
                    from: *from,
                    client_id: *client_id,
                    sent_at_ms: *sent_at_ms,
                    body: body[..].into(),
                },
                EntryRecord::Receipt {
                    kind,
                    by,
                    client_id,
                } => ServerFrame::Receipt {
                    seq: entry.seq,
                    kind: *kind,
                    by: *by,
                    client_id: *client_id,
                },
                EntryRecord::Group { group, gseq } => {
                    let post = self
                        .groups
                        .post(*group, *gseq)
                        .expect("a group entry's copy lives while the entry does");
                    group_frame(entry.seq, *group, *gseq, post)
                }
            };
            if matches!(frame, ServerFrame::Receipt { .. }) {
                receipts_written += 1;
            }
            conn.write(&frame);
            conn.delivered(entry.seq);
            written += 1;
        }
        if written > 0 {
            self.counters.messages_written += written - receipts_written;
            self.counters.receipts_written += receipts_written;
            self.conns.wake(id);
        }
    }
}

/// What a phone is told about a send the storing or owning shard refused.
fn refusal_detail(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::UnknownRecipient => "the recipient has no account",
        ErrorKind::StorageFailed => STORAGE_FAILED,
        ErrorKind::DiskFull => DISK_FULL,
        ErrorKind::Overloaded => STORAGE_UNAVAILABLE,
        ErrorKind::MailboxFull => "the recipient's mailbox is full; retry after they read",
        ErrorKind::UnknownGroup => "no such group",
        ErrorKind::NotGroupMember => "only members may do that",
        ErrorKind::NotGroupAdmin => "only admins may do that",
        ErrorKind::GroupFull => "the group would have too many members",
        ErrorKind::GroupExists => "that group id is taken; retry with another client_id",
        ErrorKind::BadRequest => "the change does not apply to the group as it stands",
        ErrorKind::OutOfOrder => {
            "an earlier send of this conversation was refused: send again from it on, in order"
        }
        _ => "message not stored",
    }
}
