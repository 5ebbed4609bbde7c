//! Group ids and the changes a group goes through.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Phone;

/// Longest group subject, in UTF-8 bytes.
pub const GROUP_SUBJECT_BYTES_MAX: usize = 256;

/// The top bit every group id has set. Phone numbers are below 10^15, so a
/// group id never equals a phone's integer: tables keyed by either (resend
/// detection) need no separate namespaces.
const GROUP_ID_MARK: u64 = 1 << 63;

/// A group, named by a 64-bit id the server derives when it is created.
/// Decoding checks the mark bit, so a `GroupId` that exists is well formed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct GroupId(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:#x} is not a group id (the top bit must be set)")]
pub struct GroupIdError(pub u64);

impl GroupId {
    /// The id of the group `creator` creates with its request `client_id`.
    /// Derived rather than drawn at random so that a resent request names
    /// the same group, and the group's owner can tell a resend from a clash.
    pub fn derive(creator: Phone, client_id: u64) -> GroupId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&creator.as_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&client_id.to_le_bytes());
        GroupId(xxhash_rust::xxh3::xxh3_64(&bytes) | GROUP_ID_MARK)
    }

    pub fn from_u64(value: u64) -> Result<GroupId, GroupIdError> {
        if value & GROUP_ID_MARK != 0 {
            Ok(GroupId(value))
        } else {
            Err(GroupIdError(value))
        }
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for GroupId {
    type Error = GroupIdError;

    fn try_from(value: u64) -> Result<GroupId, GroupIdError> {
        GroupId::from_u64(value)
    }
}

impl From<GroupId> for u64 {
    fn from(group: GroupId) -> u64 {
        group.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{:016x}", self.0)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A change to a group. Phones ask for every kind but `Created` with
/// `ChangeGroup`; every member then receives it as a `GroupNotice`, in
/// order with the group's messages.
///
/// Rules the server enforces: only admins add, remove, promote, demote and
/// change the subject; any member may leave. When the last admin leaves,
/// the remaining member with the lowest number becomes admin (every member
/// can apply that rule to the notice itself, so no extra notice is sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChange {
    /// The group was created by the notice's `by`, its first admin.
    Created {
        subject: String,
        members: Vec<Phone>,
    },
    Added(Vec<Phone>),
    Removed(Phone),
    /// The notice's `by` left.
    Left,
    Promoted(Phone),
    Demoted(Phone),
    Subject(String),
}
