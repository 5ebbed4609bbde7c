//! What a shard counts, for metrics.

/// Counters for metrics. Monotonic except the gauges noted.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ShardCounters {
    /// Gauge.
    pub connections: u64,
    /// Gauge.
    pub sessions: u64,
    /// Gauge: connections that have not logged in.
    pub connections_anonymous: u64,
    pub accounts: u64,
    pub codes_sent: u64,
    pub signups: u64,
    pub logins: u64,
    pub login_failures: u64,
    pub messages_stored: u64,
    pub messages_deduplicated: u64,
    pub messages_written: u64,
    pub messages_acked: u64,
    pub receipts_stored: u64,
    /// `Read` frames refused: not about a message delivered to the reader,
    /// or read before.
    pub reads_refused: u64,
    /// Sends refused `OutOfOrder`: an earlier send of their conversation
    /// was refused and has not come again.
    pub sends_out_of_order: u64,
    pub rate_limited: u64,
    pub protocol_errors: u64,
    pub idle_closed: u64,
    /// Closing connections dropped with bytes unwritten: the phone did not
    /// take its last frames within `close_flush_timeout_ms`.
    pub closes_abandoned: u64,
    /// Connections closed unread at accept (or handover) because too many
    /// that had not logged in were open on the shard or from the source.
    pub connections_refused: u64,
    /// Code requests refused by a limit on anonymous work (per
    /// connection, source, network, number range or the SMS budget).
    pub codes_refused: u64,
    pub handovers_out: u64,
    pub handovers_in: u64,
    /// Checkpoints written (and the segments they cover deleted).
    pub checkpoints: u64,
    /// Mailbox records that went through the write-back cache, and the
    /// messages among them acknowledged before they were due, which were
    /// never written at all.
    pub records_cached: u64,
    pub messages_never_written: u64,
    /// Messages refused because the recipient's mailbox was at its bound,
    /// and receipts dropped at the receipt bound (`receipts_max`).
    pub messages_refused_mailbox_full: u64,
    pub receipts_dropped_mailbox_full: u64,
    /// Messages and signups refused while the disk was full (or the
    /// journal short of a resource).
    pub messages_refused_disk_full: u64,
    pub signups_refused_disk_full: u64,
    /// Groups this shard owns (a gauge; groups are never deleted).
    pub groups: u64,
    /// Posts (messages and changes) accepted by groups this shard owns.
    pub group_posts: u64,
    /// Post copies stored here, and fan-outs recognised as already stored.
    pub group_copies_stored: u64,
    pub group_copies_repeated: u64,
    /// Members' mailbox entries for group posts; those not made because
    /// the member's mailbox held twice `mailbox_entries_max` messages, or because
    /// the member has no account.
    pub group_entries_stored: u64,
    pub group_entries_dropped_mailbox_full: u64,
    pub group_entries_no_account: u64,
    /// Presence changes and typing indicators written to phones, and
    /// signals dropped: at a phone's full outbox, at a backed-up shard
    /// queue, over the sender's allowance, or from a non-member.
    pub signals_delivered: u64,
    pub signals_dropped_outbox_full: u64,
    pub signals_dropped_queue_full: u64,
    pub signals_dropped_rate: u64,
    pub signals_dropped_not_member: u64,
    /// Contact syncs accepted and refused (rate), and numbers looked up.
    pub contact_syncs: u64,
    pub contact_syncs_refused: u64,
    pub contact_lookups: u64,
    /// Sends refused because the number is outside the sender's contacts
    /// and its lookup allowance was spent.
    pub stranger_sends_refused: u64,
    /// Pushes handed to the push sender, dropped because its queue was
    /// full, and not sent because one had gone out within the interval;
    /// tokens dropped because the gateway rejected them.
    pub pushes_sent: u64,
    pub pushes_dropped_queue_full: u64,
    pub pushes_coalesced: u64,
    pub push_tokens_dropped: u64,
    /// Messages deleted undelivered after `message_retention_ms`, each
    /// answered with an `Expired` receipt to its sender.
    pub messages_expired: u64,
    /// Accounts an operator deleted, and the messages (1:1 and group
    /// posts) deleted with their mailboxes, each answered with an
    /// `Undeliverable` receipt to its sender.
    pub accounts_deleted: u64,
    pub messages_undeliverable: u64,
    /// Members taken out of groups this shard owns because their account
    /// was deleted.
    pub group_members_deleted: u64,
    /// Deletions of this shard's accounts that not every shard has
    /// answered yet (their numbers cannot sign up meanwhile), and signups
    /// refused for that.
    pub account_deletions_pending: u64,
    /// Receipts kept on disk until their recipients' shards have them (a
    /// deleted account's, and those to a node that is down; see `owed`),
    /// and receipts to a node that is down that did not fit and wait on
    /// its link in memory instead.
    pub receipts_owed: u64,
    pub receipts_owed_full: u64,
    pub signups_refused_deletion_pending: u64,
    /// Receipts for messages a deleted account sent, dropped on the way
    /// to the number's new account.
    pub receipts_dropped_predecessor: u64,
    /// In a cluster: messages owed to an account or group whose home is
    /// unknown (no partition map, or its node never seen), dropped;
    /// signals dropped because their node is not live; first frames
    /// answered `Redirect` (the account lives on another node) and
    /// `TryLater` (its node is down, or the cluster has no map yet);
    /// requests refused `Unavailable`.
    pub peer_messages_unroutable: u64,
    pub signals_dropped_unreachable: u64,
    pub redirects: u64,
    pub try_laters: u64,
    pub refused_unavailable: u64,
}
