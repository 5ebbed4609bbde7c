//! Phone numbers in E.164 form, carried on the wire as one integer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Fewest digits accepted in a number, country code included.
pub const PHONE_DIGITS_MIN: u32 = 7;
/// Most digits E.164 allows, country code included.
pub const PHONE_DIGITS_MAX: u32 = 15;

const PHONE_VALUE_MIN: u64 = 10u64.pow(PHONE_DIGITS_MIN - 1);
const PHONE_VALUE_MAX: u64 = 10u64.pow(PHONE_DIGITS_MAX) - 1;

/// An E.164 phone number: `+` and 7 to 15 digits, the first one not zero.
///
/// It travels as the integer its digits spell. Because the first digit of an
/// E.164 number is never zero, the integer keeps every digit. Decoding checks
/// the range, so a `Phone` that exists is always valid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Phone(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number must start with '+': {0:?}")]
    MissingPlus(String),
    #[error("phone number must be '+' and {PHONE_DIGITS_MIN} to {PHONE_DIGITS_MAX} digits, first not 0: {0:?}")]
    Malformed(String),
    #[error("phone number value {0} is not {PHONE_DIGITS_MIN} to {PHONE_DIGITS_MAX} digits")]
    OutOfRange(u64),
}

impl Phone {
    /// Parses `+15551234567`. Spaces, dashes and brackets are not accepted:
    /// clients normalise before sending.
    pub fn parse(text: &str) -> Result<Phone, PhoneError> {
        let digits = text
            .strip_prefix('+')
            .ok_or_else(|| PhoneError::MissingPlus(text.to_owned()))?;
        let length_ok =
            (PHONE_DIGITS_MIN as usize..=PHONE_DIGITS_MAX as usize).contains(&digits.len());
        if !length_ok || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
            return Err(PhoneError::Malformed(text.to_owned()));
        }
        let value = digits
            .parse::<u64>()
            .map_err(|_| PhoneError::Malformed(text.to_owned()))?;
        Phone::from_u64(value)
    }

    pub fn from_u64(value: u64) -> Result<Phone, PhoneError> {
        if (PHONE_VALUE_MIN..=PHONE_VALUE_MAX).contains(&value) {
            Ok(Phone(value))
        } else {
            Err(PhoneError::OutOfRange(value))
        }
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// True when this number's text form starts with `prefix` (for example
    /// `+1555`), used for the test-number range. Allocates nothing: it
    /// runs for every message a test number sends.
    pub fn has_prefix(self, prefix: &str) -> bool {
        const DIGITS_MAX: usize = 20;
        let Some(wanted) = prefix.strip_prefix('+') else {
            return prefix.is_empty();
        };
        let mut digits = [0u8; DIGITS_MAX];
        let (mut value, mut start) = (self.0, DIGITS_MAX);
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        digits[start..].starts_with(wanted.as_bytes())
    }
}

impl TryFrom<u64> for Phone {
    type Error = PhoneError;
    fn try_from(value: u64) -> Result<Phone, PhoneError> {
        Phone::from_u64(value)
    }
}

impl From<Phone> for u64 {
    fn from(phone: Phone) -> u64 {
        phone.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Phone {
    type Err = PhoneError;
    fn from_str(text: &str) -> Result<Phone, PhoneError> {
        Phone::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<u64>) {
        let parsed = Phone::parse(text).ok().map(Phone::as_u64);
        assert_eq!(parsed, expected, "parsing {text:?}");
        if let Some(value) = expected {
            assert_eq!(Phone::from_u64(value).unwrap().to_string(), text);
        }
    }

    #[test]
    fn parse() {
        check("+15551234567", Some(15551234567));
        check("+4930123456", Some(4930123456));
        check("+1234567", Some(1234567));
        check("+999999999999999", Some(999999999999999));
        check("15551234567", None);
        check("+", None);
        check("+123456", None);
        check("+1234567890123456", None);
        check("+05551234567", None);
        check("+1555 123 4567", None);
        check("+1555-1234567", None);
        check("+١٢٣٤٥٦٧٨", None);
    }

    #[test]
    fn has_prefix_agrees_with_the_text_form() {
        let phone = Phone::parse("+15551234567").unwrap();
        for prefix in [
            "",
            "+",
            "+1",
            "+1555",
            "+15551234567",
            "+2",
            "+155512345678",
            "1555",
        ] {
            assert_eq!(
                phone.has_prefix(prefix),
                phone.to_string().starts_with(prefix),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn decode_rejects_out_of_range() {
        assert!(Phone::from_u64(0).is_err());
        assert!(Phone::from_u64(999_999).is_err());
        assert!(Phone::from_u64(1_000_000_000_000_000).is_err());
        assert!(Phone::from_u64(1_000_000).is_ok());
    }
}
