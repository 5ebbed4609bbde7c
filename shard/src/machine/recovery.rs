//! Rebuilding a shard from its journal, and writing it down as a
//! checkpoint: the records a checkpoint holds, restored in order into an
//! empty shard, rebuild the same state.

use storage::{EntryRecord, Record, KEY_HASH_BYTES};
use wire::{GroupId, Phone};

use super::{account::Account, clock_record, owed::OwedReceipt, Shard};
use crate::{clock::ClockState, source::Source};

/// A journal that cannot have been written by this shard's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("a mailbox record for {0}, which has no account record before it")]
    UnknownAccount(Phone),
    #[error("mailbox of {owner}: the journal says seq {recorded}, replay assigned {assigned}")]
    SeqMismatch {
        owner: Phone,
        recorded: u64,
        assigned: u64,
    },
    #[error("a checkpoint starts the mailbox of {0} at seq 0 or after entries")]
    MailboxStart(Phone),
    #[error("a post to {0}, which no record created")]
    UnknownGroup(GroupId),
    #[error("{group}: the journal says post {recorded}, the group is at {expected}")]
    GroupSeqMismatch {
        group: GroupId,
        recorded: u64,
        expected: u64,
    },
    #[error("a mailbox entry refers to post {gseq} of {group}, which has no copy before it")]
    UnknownGroupPost { group: GroupId, gseq: u64 },
}

impl Shard {
    // ---- recovery ----------------------------------------------------------

    /// Applies one record replayed from this shard's journal. Call it for
    /// every record, in journal order, before the shard takes connections.
    pub fn restore(&mut self, record: Record) -> Result<(), RestoreError> {
        match record {
            Record::AccountKey {
                phone,
                key_hash,
                generation,
            } => self.restore_key(phone, key_hash, generation),
            Record::MailboxPut { owner, seq, entry } => self.restore_put(owner, seq, entry)?,
            Record::MailboxAck { owner, up_to } => self.restore_ack(owner, up_to)?,
            Record::MailboxStart { owner, next_seq } => {
                if !self.restored_account(owner)?.restore_start(next_seq) {
                    return Err(RestoreError::MailboxStart(owner));
                }
            }
            Record::Dedup {
                owner,
                from,
                client_id,
                seq,
            } => self
                .dedup
                .replay(owner, from, client_id, (seq, 0), self.now_ms),
            Record::DedupSent {
                owner,
                from,
                client_id,
                seq,
                sent_at_ms,
            } => {
                let stamp = (seq, sent_at_ms);
                self.dedup
                    .replay(owner, from, client_id, stamp, self.now_ms);
            }
            Record::AccountSince { phone, since_ms } => {
                self.restored_account(phone)?.since_ms = since_ms;
            }
            Record::GroupPost { .. }
            | Record::GroupState { .. }
            | Record::GroupDedup { .. }
            | Record::GroupDedupSent { .. }
            | Record::GroupCopy { .. }
            | Record::GroupMark { .. } => self.groups.restore(record, self.now_ms)?,
            Record::Contacts { owner, .. }
            | Record::Profile { owner, .. }
            | Record::LastSeen { owner, .. } => {
                self.restored_account(owner)?;
                self.restore_social(record);
            }
            Record::PushToken { owner, token } => {
                self.restored_account(owner)?;
                self.restore_push(owner, token);
            }
            Record::CodeSent {
                phone,
                source,
                at_ms,
            } => self.restore_code_sent(phone, Source::new(source), at_ms),
            Record::Clock {
                latest_ms,
                floor_ms,
            } => self.clock.restore(ClockState {
                latest_ms,
                floor_ms,
            }),
            Record::AccountDeleted { phone } => {
                // The deletion acknowledged everything first; a mailbox
                // that still holds entries lets their group copies go. In
                // a checkpoint it is a pending deletion alone, the account
                // gone already.
                if let Some(account) = self.accounts.get(&phone) {
                    let last_seq = account.mailbox.last_seq();
                    self.restore_ack(phone, last_seq)?;
                    self.remove_account(phone);
                }
                self.deletions.begin(phone, None);
            }
            Record::ReceiptOwed {
                to,
                by,
                client_id,
                kind,
                sent_at_ms,
            } => {
                let receipt = OwedReceipt {
                    to,
                    by,
                    client_id,
                    kind,
                    sent_at_ms,
                };
                self.owed.owe(receipt, None);
            }
            Record::EpochStart { island, epoch, seq } => self.epochs.restore(island, epoch, seq),
        }
        Ok(())
    }

    /// A replayed `AccountKey`: the account's key now, made if new.
    fn restore_key(&mut self, phone: Phone, key_hash: [u8; KEY_HASH_BYTES], generation: u64) {
        match self.accounts.get_mut(&phone) {
            Some(account) => {
                account.key_hash = key_hash;
                account.generation = generation;
            }
            None => {
                self.accounts
                    .insert(phone, Account::new(key_hash, generation));
                self.counters.accounts += 1;
                // A signup waits for its number's deletion to finish.
                self.deletions.forget(phone);
            }
        }
    }

    fn restore_ack(&mut self, owner: Phone, up_to: u64) -> Result<(), RestoreError> {
        let account = self.restored_account(owner)?;
        let before = account.mailbox.size();
        let groups_acked = account.restore_ack(up_to);
        let after = account.mailbox.size();
        self.mailbox_totals.moved(before, after);
        for (group, gseq) in groups_acked {
            self.restore_group_ack(owner, group, gseq);
        }
        Ok(())
    }

    /// The account a replayed record names, which an earlier record must
    /// have made.
    fn restored_account(&mut self, owner: Phone) -> Result<&mut Account, RestoreError> {
        self.accounts
            .get_mut(&owner)
            .ok_or(RestoreError::UnknownAccount(owner))
    }

    /// A replayed `MailboxPut`.
    fn restore_put(
        &mut self,
        owner: Phone,
        seq: u64,
        entry: EntryRecord,
    ) -> Result<(), RestoreError> {
        if let EntryRecord::Message {
            from,
            client_id,
            sent_at_ms,
            ..
        } = entry
        {
            // Rebuilt with the restore time as its age: a resend after a
            // restart is still recognised for the full TTL.
            self.dedup
                .replay(owner, from, client_id, (seq, sent_at_ms), self.now_ms);
        }
        let group_entry = match entry {
            EntryRecord::Group { group, gseq } => Some((group, gseq)),
            _ => None,
        };
        let account = self.restored_account(owner)?;
        let before = account.mailbox.size();
        let put = account.restore_put(seq, entry);
        let after = account.mailbox.size();
        self.mailbox_totals.moved(before, after);
        put.map_err(|assigned| RestoreError::SeqMismatch {
            owner,
            recorded: seq,
            assigned,
        })?;
        if let Some((group, gseq)) = group_entry {
            self.restore_group_entry(owner, group, gseq, seq)?;
        }
        Ok(())
    }

    /// Every record is restored: does now the indexing that `restore`
    /// deferred, so the first phone does not wait for it. (Skipping this
    /// is safe; the first lookup would do it.)
    pub fn restored(&mut self) {
        let (jump_max, confirmed) = (self.config.clock_jump_max_ms, self.config.clock_confirmed);
        self.clock.started(self.now_ms, jump_max, confirmed);
        self.dedup.settle();
        self.groups_restored();
        self.update_deletion_counters();
        self.counters.receipts_owed = self.owed.len() as u64;
    }

    /// Which epoch of its island wrote which batches of the log.
    pub fn epochs(&self) -> &super::EpochHistory {
        &self.epochs
    }

    /// Batch `seq` of the log begins `epoch` of `island`: the record to
    /// write alone as that batch (the driver writes it itself, outside
    /// `take_records`, so that no other record shares its batch).
    pub fn start_epoch(&mut self, island: u16, epoch: u64, seq: u64) -> Record {
        self.epochs.start(island, epoch, seq)
    }

    /// A checkpoint of this shard is durable.
    pub fn checkpoint_finished(&mut self) {
        self.counters.checkpoints += 1;
    }

    /// The shard's durable state as records: restored in order into an
    /// empty shard, they rebuild it (accounts, mailboxes with their seqs,
    /// recent client ids). What a checkpoint holds.
    pub fn checkpoint(&mut self) -> Vec<Record> {
        let mut records = Vec::with_capacity(self.accounts.len() * 2 + self.dedup.len());
        if let Some(state) = self.clock.to_record(true) {
            records.push(clock_record(state));
        }
        self.anonymous.checkpoint(&mut records);
        self.deletions.checkpoint(&mut records);
        self.owed.checkpoint(&mut records);
        self.epochs.checkpoint(&mut records);
        self.groups.checkpoint(&mut records);
        for (&phone, account) in &self.accounts {
            records.push(Record::AccountKey {
                phone,
                key_hash: account.key_hash,
                generation: account.generation,
            });
            if account.since_ms > 0 {
                let since_ms = account.since_ms;
                records.push(Record::AccountSince { phone, since_ms });
            }
            self.checkpoint_social(phone, &mut records);
            self.checkpoint_push(phone, &mut records);
            records.push(Record::MailboxStart {
                owner: phone,
                next_seq: account.mailbox.acked_up_to() + 1,
            });
            // Entries still in the write-back cache are not in the log
            // either: they reach it (or not) after the checkpoint.
            let written = account
                .mailbox
                .after(0)
                .filter(|e| e.seq <= account.write_back.written_put());
            for entry in written {
                records.push(Record::MailboxPut {
                    owner: phone,
                    seq: entry.seq,
                    entry: entry.record.clone(),
                });
            }
        }
        for listed in self.dedup.iter() {
            records.push(Record::DedupSent {
                owner: listed.to,
                from: listed.from,
                client_id: listed.client_id,
                seq: listed.id,
                sent_at_ms: listed.sent_at_ms,
            });
        }
        records
    }
}
