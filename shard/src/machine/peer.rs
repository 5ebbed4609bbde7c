//! Messages between shards. They travel only through the bounded
//! per-(source, destination) queues (or, to the shard itself, through its
//! local queue, so that local delivery keeps the order remote delivery has).

use std::sync::Arc;

use storage::Post;
use wire::{ErrorKind, GroupId, Phone, Presence, Profile, ReceiptKind, TypingState};

use super::{
    owed::{OwedKey, OwedReceipt},
    ConnId, GroupAction,
};

/// Messages between shards. They travel only through the bounded
/// per-(source, destination) queues, and between nodes on their links
/// (encoded with postcard: variants are only appended, like records').
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum PeerMessage {
    /// Store a message in `to`'s mailbox; answer `Stored` to `reply` on the
    /// sender's home shard.
    Deliver {
        from: Phone,
        to: Phone,
        client_id: u64,
        sent_at_ms: u64,
        /// When `from`'s account was created (Unix ms, 0: not known): a
        /// resend-table entry older than it is a deleted predecessor's.
        sender_since_ms: u64,
        body: Arc<[u8]>,
        reply: ConnId,
    },
    /// The answer to `Deliver`, for the sender's connection.
    Stored {
        reply: ConnId,
        sender: Phone,
        client_id: u64,
        result: Result<u64, ErrorKind>,
    },
    /// Store a receipt in `to`'s mailbox: `by`'s for `to`'s message
    /// `client_id`, sent at `sent_at_ms` (Unix ms; 0: not known). A
    /// message sent before `to`'s account was created is a deleted
    /// predecessor's: its receipt is dropped.
    Receipt {
        to: Phone,
        by: Phone,
        client_id: u64,
        kind: ReceiptKind,
        sent_at_ms: u64,
    },
    /// A phone's request to `group`'s owner; answered with `Stored`.
    GroupRequest {
        group: GroupId,
        from: Phone,
        client_id: u64,
        at_ms: u64,
        /// When `from`'s account was created (see `Deliver`).
        sender_since_ms: u64,
        reply: ConnId,
        action: GroupAction,
    },
    /// A group post for `members`, who live on the destination shard.
    GroupFanout {
        group: GroupId,
        gseq: u64,
        post: Post,
        members: Vec<Phone>,
    },
    /// The answer to `GroupFanout`: the copy is durable.
    GroupStored {
        group: GroupId,
        gseq: u64,
    },
    /// `watcher` follows `target`'s presence; answered with `PresenceOf`
    /// for `conn`.
    Watch {
        watcher: Phone,
        target: Phone,
        conn: ConnId,
    },
    Unwatch {
        watcher: Phone,
        target: Phone,
    },
    /// `about`'s presence for its follower `to`: the answer to `Watch` for
    /// `conn`, or (without) a change.
    PresenceOf {
        to: Phone,
        about: Phone,
        presence: Presence,
        conn: Option<ConnId>,
    },
    /// `viewer` asks for `target`'s profile; answered with `ProfileOf`.
    ProfileQuery {
        viewer: Phone,
        target: Phone,
        conn: ConnId,
    },
    /// `about`'s profile for `to` (`None`: not visible): the answer to
    /// `ProfileQuery` for `conn`, or (without) a change.
    ProfileOf {
        to: Phone,
        about: Phone,
        profile: Option<Box<Profile>>,
        conn: Option<ConnId>,
    },
    /// A typing indicator for phones of the destination shard.
    TypingTo {
        to: Vec<Phone>,
        from: Phone,
        group: Option<GroupId>,
        state: TypingState,
    },
    /// A typing indicator for a group, to its owner to check and fan out.
    GroupTyping {
        group: GroupId,
        from: Phone,
        state: TypingState,
    },
    /// Which of `phones` have accounts; answered with `AccountsFound` to
    /// `asker`'s home, the shard that asked.
    LookupAccounts {
        query: u64,
        asker: Phone,
        phones: Vec<Phone>,
    },
    AccountsFound {
        query: u64,
        asker: Phone,
        registered: Vec<Phone>,
    },
    /// `phone`'s account was deleted (durably, on its home shard): take
    /// it out of the groups this shard owns. Sent to every shard on the
    /// same queues as the account's group requests, so none of those
    /// arrives after it.
    AccountGone {
        phone: Phone,
    },
    /// The answer to `AccountGone`, to `phone`'s home shard once the
    /// sender's `Left` posts are durable: tablet (`island`, `shard`)
    /// holds `phone` in none of its groups.
    GroupsLeft {
        phone: Phone,
        island: crate::island::IslandId,
        shard: u16,
    },
    /// Receipts owed to accounts of the destination shard (at most
    /// `RECEIPTS_PER_MESSAGE_MAX`; see `owed`): told until answered, and
    /// stored through any write-back cache.
    ReceiptsOwed {
        receipts: Vec<OwedReceipt>,
    },
    /// The answer to `ReceiptsOwed`, to the owing shard once the batch
    /// holding them is durable: the receipts that need no telling again
    /// (stored, or moot: no such account, or a newer account of the
    /// number). Receipts whose account lives elsewhere now are left out,
    /// so they are told to their new home.
    OwedStored {
        stored: Vec<OwedKey>,
    },
}

impl PeerMessage {
    /// Signals may be dropped on the way when the destination's queue is
    /// backed up: nothing depends on their arrival but what a phone shows.
    /// Answers to a phone's own request are not signals.
    pub fn is_signal(&self) -> bool {
        matches!(
            self,
            PeerMessage::Unwatch { .. }
                | PeerMessage::PresenceOf { conn: None, .. }
                | PeerMessage::ProfileOf { conn: None, .. }
                | PeerMessage::TypingTo { .. }
                | PeerMessage::GroupTyping { .. }
        )
    }
}
