//! What a shard counts, for metrics.

/// Counters for metrics. Monotonic except the gauges noted.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
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
    /// Messages and group posts written to their recipients' connections,
    /// and acknowledged; receipts are counted apart.
    pub messages_written: u64,
    pub messages_acked: u64,
    /// Receipts stored in mailboxes, written to connections, acknowledged.
    pub receipts_stored: u64,
    pub receipts_written: u64,
    pub receipts_acked: u64,
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
    /// Follows sent again to a node that came back as a new incarnation
    /// (its followers' lists were in memory).
    pub presence_rewatched: u64,
    /// Messages that reached a tablet this node does not serve (their
    /// sender's view of an island was behind or ahead of this node's),
    /// sent on to where their account or group lives now; and answers
    /// among them dropped (the phone that asked is not here: it asks
    /// again).
    pub peer_messages_forwarded: u64,
    /// Messages and group requests out to an island's old primary,
    /// refused `Unavailable` when the island moved (the phone sends them
    /// again, in order, to the new one).
    pub refused_island_moved: u64,
    pub peer_messages_forwarded_dropped: u64,
    /// Contact lookups (syncs, group members) some shard never answered
    /// within 15 s, refused `Unavailable`.
    pub lookups_expired: u64,
}

impl ShardCounters {
    /// What counter `field` counts, with its unit, for `/metrics`' HELP
    /// lines; `None` for a name that is no field. Every field has one
    /// (tested): a counter is added here with its meaning.
    pub fn help(field: &str) -> Option<&'static str> {
        Some(match field {
            "connections" => "connections open on this shard now, logged in or not",
            "sessions" => "connections logged in on this shard now (one per online account)",
            "connections_anonymous" => "connections on this shard that have not logged in yet",
            "accounts" => "accounts whose home is this shard",
            "codes_sent" => "signup codes handed to the SMS sender",
            "signups" => "signups completed (Verify answered Registered), new accounts and returning ones",
            "logins" => "logins accepted (Login answered LoggedIn)",
            "login_failures" => "logins refused BadCredentials (unknown number or wrong key)",
            "messages_stored" => "1:1 messages stored in a mailbox here (resends and receipts not counted)",
            "messages_deduplicated" => "sends and group posts recognised as resends of a stored one, answered again and not stored twice",
            "messages_written" => "1:1 messages and group posts written to their recipient's connection (again after a reconnect; receipts not counted)",
            "messages_acked" => "1:1 messages and group posts acknowledged by their recipient, each answered with a Delivered receipt to its author",
            "receipts_stored" => "receipts (Delivered, Read, Expired, Undeliverable) stored in a mailbox here",
            "receipts_written" => "receipts written to the connection of the phone they are for (again after a reconnect)",
            "receipts_acked" => "receipts acknowledged by the phone they are for",
            "reads_refused" => "Read frames refused: not about a message delivered to the reader, or read before",
            "sends_out_of_order" => "sends refused OutOfOrder: an earlier send of their conversation was refused and has not come again",
            "rate_limited" => "requests refused RateLimited: sends, code requests and guesses, logins",
            "protocol_errors" => "connections closed for breaking the protocol (an Error, then Bye ProtocolError)",
            "idle_closed" => "connections closed for silence (idle_timeout_ms) or for no login in time (login_timeout_ms)",
            "closes_abandoned" => "closing connections dropped with bytes unwritten: the phone took no last frames within close_flush_timeout_ms",
            "connections_refused" => "connections closed unread at accept or handover: too many not logged in on the shard or from one source",
            "codes_refused" => "code requests refused by a limit on work before login (per connection, source, network, number range, SMS budget)",
            "handovers_out" => "connections moved from this shard to their account's home shard",
            "handovers_in" => "connections moved to this shard from another",
            "checkpoints" => "checkpoints written (the log segments they cover deleted)",
            "records_cached" => "mailbox records that went through the write-back cache (sync_delay_ms)",
            "messages_never_written" => "messages acknowledged before the write-back cache was due to write them: never on disk",
            "messages_refused_mailbox_full" => "messages refused MailboxFull: the recipient's mailbox held mailbox_entries_max messages or mailbox_bytes_max bytes",
            "receipts_dropped_mailbox_full" => "receipts dropped: their recipient's mailbox held receipts_max receipts",
            "messages_refused_disk_full" => "messages refused DiskFull or Overloaded: the disk was full or the journal short of a resource",
            "signups_refused_disk_full" => "signups refused DiskFull or Overloaded: the disk was full or the journal short of a resource",
            "groups" => "groups this shard owns (groups are never deleted)",
            "group_posts" => "posts and changes accepted by groups this shard owns",
            "group_copies_stored" => "group posts stored once on this shard for its members",
            "group_copies_repeated" => "group fan-outs found stored already (sent again after the group's owner restarted)",
            "group_entries_stored" => "mailbox entries made on this shard for members' group posts",
            "group_entries_dropped_mailbox_full" => "members' group post entries not made: the member held group_entries_max posts or group_bytes_max bytes (the author gets Undeliverable)",
            "group_entries_no_account" => "members' group post entries not made: the member has no account",
            "signals_delivered" => "presence changes and typing indicators written to phones",
            "signals_dropped_outbox_full" => "presence changes and typing indicators dropped at a phone's full outbox",
            "signals_dropped_queue_full" => "presence changes and typing indicators dropped at a backed-up queue to another shard",
            "signals_dropped_rate" => "presence changes and typing indicators dropped over the sender's send allowance",
            "signals_dropped_not_member" => "typing indicators to a group dropped: the sender is no member",
            "contact_syncs" => "contact syncs accepted",
            "contact_syncs_refused" => "contact syncs refused RateLimited (contact_syncs_per_hour)",
            "contact_lookups" => "numbers looked up for contact syncs",
            "stranger_sends_refused" => "sends refused: the number is outside the sender's contacts and its lookup allowance is spent",
            "pushes_sent" => "pushes handed to the push sender",
            "pushes_dropped_queue_full" => "pushes dropped: the push sender's queue was full",
            "pushes_coalesced" => "pushes not sent because one went to the account within push.interval_ms",
            "push_tokens_dropped" => "push tokens dropped because the gateway rejected them",
            "messages_expired" => "messages and group posts deleted undelivered after message_retention_ms, each answered with an Expired receipt",
            "accounts_deleted" => "accounts an operator deleted",
            "messages_undeliverable" => "messages and group posts deleted with a deleted account's mailbox, each answered with an Undeliverable receipt",
            "group_members_deleted" => "members taken out of groups this shard owns because their account was deleted",
            "account_deletions_pending" => "deletions of this shard's accounts not yet answered by every shard (those numbers cannot sign up meanwhile)",
            "receipts_owed" => "receipts kept on disk until their recipients' shards have them (a deleted account's, those to a node that is down)",
            "receipts_owed_full" => "receipts to a node that is down that did not fit the owed table and wait on its link in memory",
            "signups_refused_deletion_pending" => "signups refused Unavailable: the number's deleted account is still being taken out of its groups",
            "receipts_dropped_predecessor" => "receipts for messages a deleted account sent, dropped on the way to the number's new account",
            "peer_messages_unroutable" => "messages to an account or group whose home is unknown (no partition map, or a node never seen), dropped",
            "signals_dropped_unreachable" => "presence changes and typing indicators dropped: their node is not live",
            "redirects" => "first frames answered Redirect: the account lives on another node",
            "try_laters" => "first frames answered TryLater: the account's node is down, the cluster has no map yet, or logins are over logins_admitted_per_s",
            "refused_unavailable" => "requests refused Unavailable: the node holding the recipient or group is down or unknown",
            "presence_rewatched" => "presence follows sent again to a node that came back as a new incarnation",
            "refused_island_moved" => "messages and group requests out to an island's old primary, refused Unavailable when the island moved to another node (the phone sends them again)",
            "peer_messages_forwarded" => "messages that reached a tablet this node does not serve (the sender's view of its island was stale), sent on to where their account or group lives now",
            "peer_messages_forwarded_dropped" => "answers that reached a tablet this node does not serve, dropped: the phone that asked is not here and asks again",
            "lookups_expired" => "contact lookups (syncs, new group members) some shard left unanswered for 15 s, refused Unavailable",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_says_what_it_counts() {
        let fields = toml::Table::try_from(ShardCounters::default()).unwrap();
        for field in fields.keys() {
            let help = ShardCounters::help(field);
            assert!(help.is_some_and(|h| h.len() > 20), "{field} has no help");
        }
        assert_eq!(ShardCounters::help("no_such_counter"), None);
    }
}
