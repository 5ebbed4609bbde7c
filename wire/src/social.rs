//! Presence, typing, contacts and profiles: what phones learn about each
//! other besides messages.
//!
//! Presence and typing are signals: the server forwards them while it has
//! room and drops them otherwise, never stores them for a phone that is
//! away. Contacts and profiles are durable, like accounts.

use serde::{Deserialize, Serialize};

use crate::{GroupId, Phone};

/// Longest display name, in UTF-8 bytes.
pub const PROFILE_NAME_BYTES_MAX: usize = 64;
/// Longest "about" text, in UTF-8 bytes.
pub const PROFILE_ABOUT_BYTES_MAX: usize = 256;
/// Longest photo reference (opaque to the server: a media id, a URL).
pub const PROFILE_PHOTO_BYTES_MAX: usize = 256;

/// Longest push token, in bytes (FCM's are about 160, APNs' 64).
pub const PUSH_TOKEN_BYTES_MAX: usize = 512;

/// Which gateway a push token belongs to; the push relay picks by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushPlatform {
    Fcm,
    Apns,
}

impl PushPlatform {
    pub fn name(self) -> &'static str {
        match self {
            PushPlatform::Fcm => "fcm",
            PushPlatform::Apns => "apns",
        }
    }
}

/// Where a typing indicator applies: a 1:1 chat with a phone, or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chat {
    Direct(Phone),
    Group(GroupId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypingState {
    Composing,
    Paused,
}

/// What a phone may see of another's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    /// Connected and available.
    Online,
    /// Away; `last_seen_ms` (Unix milliseconds) is absent when the account
    /// hides it or the server does not know it.
    Offline { last_seen_ms: Option<u64> },
    /// Not visible to this phone: the two are not each other's contacts,
    /// or no such account exists (deliberately the same answer).
    Unavailable,
}

/// What an account shows its contacts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub about: String,
    /// An opaque reference to the photo, empty for none.
    pub photo: Vec<u8>,
}

/// A profile field over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("profile {field} of {bytes} bytes exceeds {max}")]
pub struct ProfileTooLarge {
    /// `name`, `about` or `photo`.
    pub field: &'static str,
    pub bytes: usize,
    pub max: usize,
}

impl Profile {
    /// Checks every field against its limit; the error names the first
    /// field over it.
    pub fn check(&self) -> Result<(), ProfileTooLarge> {
        let fields = [
            ("name", self.name.len(), PROFILE_NAME_BYTES_MAX),
            ("about", self.about.len(), PROFILE_ABOUT_BYTES_MAX),
            ("photo", self.photo.len(), PROFILE_PHOTO_BYTES_MAX),
        ];
        for (field, bytes, max) in fields {
            if bytes > max {
                return Err(ProfileTooLarge { field, bytes, max });
            }
        }
        Ok(())
    }
}
