//! Every frame a phone and the server exchange.
//!
//! Variants are only ever appended: postcard encodes the variant index, so
//! reordering would change the meaning of bytes already in flight.

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Serialize};

use crate::{Chat, GroupChange, GroupId, Phone, Presence, Profile, PushPlatform, TypingState};

/// Bytes in a device key, and in its hash.
pub const DEVICE_KEY_BYTES: usize = 32;

/// The secret a phone receives once at signup and presents at every login.
/// The server keeps only its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKey(pub [u8; DEVICE_KEY_BYTES]);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys end up in logs through Debug; never print the secret.
        f.write_str("DeviceKey(..)")
    }
}

/// Frames a phone sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame<'a> {
    /// Must be the first frame on a connection.
    Hello {
        version: u16,
    },
    /// Ask for a six-digit code to be sent to `phone` by SMS.
    RequestCode {
        phone: Phone,
    },
    /// Prove ownership of `phone`; answered with `Registered` and a new key.
    Verify {
        phone: Phone,
        code: u32,
    },
    /// Authenticate this connection as `phone`.
    Login {
        phone: Phone,
        key: DeviceKey,
    },
    /// Keepalive; answered with `Pong` carrying the same nonce.
    Ping {
        nonce: u64,
    },
    /// Send `body` (opaque to the server) to `to`. `client_id` is chosen by
    /// the phone, unique among its own messages; a resend with the same id is
    /// answered with the same `Sent` and never stored twice.
    Send {
        client_id: u64,
        to: Phone,
        #[serde(borrow)]
        body: &'a [u8],
    },
    /// Everything in this phone's mailbox up to and including `up_to` has
    /// been received and may be deleted.
    Ack {
        up_to: u64,
    },
    /// The message `client_id` that `from` sent has been read by this phone.
    Read {
        from: Phone,
        client_id: u64,
    },
    /// Create a group with this phone as its first admin. Answered with
    /// `Sent`, whose `id` is the new group's id; every member, the creator
    /// included, then receives a `Created` notice.
    CreateGroup {
        client_id: u64,
        #[serde(borrow)]
        subject: &'a str,
        members: Vec<Phone>,
    },
    /// Send `body` to every member of `group`. Answered with `Sent`, whose
    /// `id` is the message's position in the group; like `Send`, a resend
    /// with the same `client_id` is never stored twice.
    GroupSend {
        client_id: u64,
        group: GroupId,
        #[serde(borrow)]
        body: &'a [u8],
    },
    /// Change a group (see [`GroupChange`] for who may). Answered with
    /// `Sent`, whose `id` is the change's position in the group.
    ChangeGroup {
        client_id: u64,
        group: GroupId,
        change: GroupChange,
    },
    /// Follow `phone`'s presence (and profile changes) on this connection.
    /// Answered with a `Presence`, `Unavailable` unless each has the other
    /// in its contacts; changes follow until `Unsubscribe` or the
    /// connection ends.
    Subscribe {
        phone: Phone,
    },
    Unsubscribe {
        phone: Phone,
    },
    /// Shown to subscribers: available (the default at login) or away
    /// while keeping the connection.
    SetPresence {
        available: bool,
    },
    /// A typing indicator for a chat; forwarded to whoever is connected,
    /// never stored.
    Typing {
        chat: Chat,
        state: TypingState,
    },
    /// Upload address-book numbers: with `full` they replace the stored
    /// list (`remove` must be empty), otherwise `add` and `remove` change
    /// it. Answered with `Contacts`, the registered numbers among those
    /// uploaded.
    SyncContacts {
        client_id: u64,
        full: bool,
        add: Vec<Phone>,
        remove: Vec<Phone>,
    },
    /// Replace this account's profile; answered with `Done` once durable.
    SetProfile {
        client_id: u64,
        profile: Profile,
    },
    /// Answered with `Profile`, empty unless each has the other in its
    /// contacts.
    GetProfile {
        phone: Phone,
    },
    /// Hide (or show again) this account's last-seen time from everyone;
    /// answered with `Done` once durable.
    SetPrivacy {
        client_id: u64,
        hide_last_seen: bool,
    },
    /// Wake this phone through `platform` with `token` when something
    /// waits for it while it is away; an empty token stops that. Replaces
    /// the token before; answered with `Done` once durable.
    RegisterPush {
        client_id: u64,
        platform: PushPlatform,
        token: String,
    },
}

impl ClientFrame<'_> {
    /// The phone's id for this request, for the frames that carry one: an
    /// error about the frame names it, so the phone can match the two.
    pub fn client_id(&self) -> Option<u64> {
        match self {
            ClientFrame::Send { client_id, .. }
            | ClientFrame::Read { client_id, .. }
            | ClientFrame::CreateGroup { client_id, .. }
            | ClientFrame::GroupSend { client_id, .. }
            | ClientFrame::ChangeGroup { client_id, .. }
            | ClientFrame::SyncContacts { client_id, .. }
            | ClientFrame::SetProfile { client_id, .. }
            | ClientFrame::SetPrivacy { client_id, .. }
            | ClientFrame::RegisterPush { client_id, .. } => Some(*client_id),
            ClientFrame::Hello { .. }
            | ClientFrame::RequestCode { .. }
            | ClientFrame::Verify { .. }
            | ClientFrame::Login { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::Ack { .. }
            | ClientFrame::Subscribe { .. }
            | ClientFrame::Unsubscribe { .. }
            | ClientFrame::SetPresence { .. }
            | ClientFrame::Typing { .. }
            | ClientFrame::GetProfile { .. } => None,
        }
    }
}

/// Frames the server sends.
///
/// The server only encodes these, borrowing bodies from its mailboxes; phones
/// only decode them, and [`decode_server`](crate::decode_server) gives back an
/// owned `ServerFrame<'static>` that outlives the bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame<'a> {
    Welcome {
        version: u16,
    },
    CodeSent {
        phone: Phone,
        expires_in_s: u32,
    },
    Registered {
        phone: Phone,
        key: DeviceKey,
    },
    LoggedIn {
        phone: Phone,
    },
    Pong {
        nonce: u64,
    },
    /// The message `client_id` is stored for its recipient under `id`.
    Sent {
        client_id: u64,
        id: u64,
    },
    /// A message from `from`, at mailbox position `seq`.
    Message {
        seq: u64,
        from: Phone,
        client_id: u64,
        sent_at_ms: u64,
        body: Cow<'a, [u8]>,
    },
    /// `by` received (or read) the message `client_id` this phone sent.
    Receipt {
        seq: u64,
        kind: ReceiptKind,
        by: Phone,
        client_id: u64,
    },
    /// A request failed. `client_id` names the `Send` it answers, if any.
    Error {
        kind: ErrorKind,
        client_id: Option<u64>,
        detail: String,
    },
    /// The server is closing this connection; nothing follows.
    Bye {
        reason: ByeReason,
    },
    /// A message `from` sent to `group`, at mailbox position `seq`; `gseq`
    /// is its position in the group, the same for every member.
    GroupMessage {
        seq: u64,
        group: GroupId,
        gseq: u64,
        from: Phone,
        client_id: u64,
        sent_at_ms: u64,
        body: Cow<'a, [u8]>,
    },
    /// `by` changed `group`, at mailbox position `seq` and group position
    /// `gseq`.
    GroupNotice {
        seq: u64,
        group: GroupId,
        gseq: u64,
        by: Phone,
        at_ms: u64,
        change: GroupChange,
    },
    /// `phone`'s presence: the answer to `Subscribe`, then each change.
    Presence {
        phone: Phone,
        presence: Presence,
    },
    /// `from` is typing (or paused) in the 1:1 chat with this phone, or in
    /// `group`.
    Typing {
        from: Phone,
        group: Option<GroupId>,
        state: TypingState,
    },
    /// The answer to `SyncContacts`: which uploaded numbers have accounts,
    /// in ascending order.
    Contacts {
        client_id: u64,
        registered: Vec<Phone>,
    },
    /// `phone`'s profile: the answer to `GetProfile` (`None` when not
    /// visible), then each change for subscribers.
    Profile {
        phone: Phone,
        profile: Option<Profile>,
    },
    /// The request `client_id` (`SetProfile`, `SetPrivacy`, `RegisterPush`)
    /// is durable.
    Done {
        client_id: u64,
    },
    /// The account this connection named lives on another server of the
    /// cluster, at `addr` (`host:port`, the phone-facing TLS address):
    /// connect there; the connection closes after this frame. `revision`
    /// is the version of the cluster's partition map the server went by:
    /// a phone that caches owners keeps the answer with the highest.
    Redirect {
        addr: String,
        revision: u64,
    },
    /// The server takes no more logins for now: reconnect after `after_ms`
    /// (randomized by the server, so phones that arrive together spread
    /// out); the connection closes after this frame.
    TryLater {
        after_ms: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    Delivered,
    Read,
    /// The message waited longer than the server keeps messages and was
    /// deleted without reaching `by`.
    Expired,
    /// The group post, answered `Sent`, could not be stored for the member
    /// `by` (its mailbox held as many group posts as one account may) and
    /// will never reach it.
    Undeliverable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The `Hello` asked for a protocol version this server does not speak.
    UnsupportedVersion,
    /// A frame other than `Hello` came first.
    HelloRequired,
    /// The frame could not be decoded.
    Malformed,
    /// The length prefix exceeds `FRAME_BYTES_MAX`.
    FrameTooLarge,
    /// Too many codes requested, or too many messages sent, too fast.
    RateLimited,
    /// The code was wrong, or no code is pending for this phone (none was
    /// asked for, it expired, or it took too many wrong tries): one answer
    /// for all, so that no one learns whether a number asked for a code.
    BadCode,
    /// No longer sent (see `BadCode`); kept so later variants keep their
    /// numbers.
    CodeExpired,
    /// No longer sent (see `BadCode`).
    TooManyAttempts,
    /// The SMS gateway cannot take more codes right now.
    SmsUnavailable,
    /// Login failed: unknown phone or wrong key (deliberately one kind).
    BadCredentials,
    /// This request needs a logged-in connection.
    NotLoggedIn,
    /// This connection is already logged in.
    AlreadyLoggedIn,
    /// The message body is longer than `BODY_BYTES_MAX`.
    BodyTooLarge,
    /// The recipient has no account; for `CreateGroup` and an `Added`
    /// change, one of the numbers named has none (only accounts become
    /// members).
    UnknownRecipient,
    /// The server is shedding load; retry later.
    Overloaded,
    /// The acknowledged sequence number was never delivered.
    BadAck,
    /// The server cannot write to its storage: nothing new can be accepted
    /// until it is restarted. Already stored messages are still delivered.
    StorageFailed,
    /// The recipient's mailbox holds as much as one account may have
    /// queued; retry after the recipient has read some.
    MailboxFull,
    /// The server's disk is full: new messages and signups are refused
    /// until space is freed; acknowledgements and deliveries go on.
    DiskFull,
    /// No longer sent: a group that does not exist is answered like one
    /// the sender is not in (`NotGroupMember`), so that no one learns
    /// which ids are taken. Kept so that later variants keep their numbers.
    UnknownGroup,
    /// Only members may send to a group or change it; also the answer
    /// for a group that does not exist.
    NotGroupMember,
    /// Only admins may change a group's members or subject.
    NotGroupAdmin,
    /// The group would have more members than the server allows.
    GroupFull,
    /// The request is well formed but makes no sense: adding a member who
    /// is one, a subject over `GROUP_SUBJECT_BYTES_MAX`, and the like.
    BadRequest,
    /// Another group already has the id this creation derives; retry with
    /// another `client_id`.
    GroupExists,
    /// The contact list would hold more numbers than the server keeps.
    TooManyContacts,
    /// This connection follows as many phones as it may.
    TooManySubscriptions,
    /// An earlier send of the same conversation (this sender and that
    /// recipient or group) on this connection was refused with a
    /// retryable error and has not come again: nothing later in the
    /// conversation is stored until it does, so that the recipient gets
    /// the sender's messages in the order they were written. Send again
    /// from the refused one on, in order.
    OutOfOrder,
    /// The recipient's (or group's) server is down or not known right
    /// now: nothing was stored. Keep the message and send it again later.
    Unavailable,
}

impl ErrorKind {
    /// Whether the same request may succeed if sent again unchanged later:
    /// the refusal means "not now", not "never". A `Send`, `GroupSend` or
    /// `ChangeGroup` refused with one of these leaves a gap in its
    /// conversation that the phone must fill before anything later in it
    /// is stored (see [`ErrorKind::OutOfOrder`]); the other kinds are
    /// final, and the conversation goes on without that message.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::SmsUnavailable
                | ErrorKind::Overloaded
                | ErrorKind::StorageFailed
                | ErrorKind::MailboxFull
                | ErrorKind::DiskFull
                | ErrorKind::OutOfOrder
                | ErrorKind::Unavailable
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ByeReason {
    /// A newer connection logged in to the same account.
    Replaced,
    /// The account signed up again; this device's key no longer works.
    Revoked,
    /// Nothing arrived for longer than the idle timeout.
    IdleTimeout,
    /// The peer broke the protocol; the preceding `Error` says how.
    ProtocolError,
    /// The server is shutting down.
    ShuttingDown,
    /// An operator deleted the account: its key, its queued messages and
    /// its group memberships are gone. The number may sign up again.
    AccountDeleted,
}
